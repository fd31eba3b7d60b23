"""GLib facts, defined once: GSource layout, flags and states; GSourceCallback; GMainContext.

Every command, the census, the trace, the report and its schema use these words and numbers;
nothing else in the package spells them.  No gdb imports.

struct _GSource is public and has not changed since GLib 2.28.  GSourceCallback and
GMainContext are private; the offsets below hold for every GLib from 2.56 to 2.86 (the
versions Debian and QEMU 5.2-10.2 pair with) and readers validate what they read with them.
"""
import re
import struct

# --- struct _GSource (x86_64) ------------------------------------------------------------
GSOURCE_SIZE = 96
GSOURCE_OFFSETS = {
    "callback_data": 0, "callback_funcs": 8, "source_funcs": 16, "ref_count": 24,
    "context": 32, "priority": 40, "flags": 44, "source_id": 48, "poll_fds": 56,
    "prev": 64, "next": 72, "name": 80, "priv": 88,
}
GSOURCE_U32_FIELDS = ("ref_count", "flags", "source_id")
GSOURCE_S32_FIELDS = ("priority",)

# GHook / GSource flag bits (ghook.h, gmain.c; the same in every GLib version read).
G_SOURCE_ACTIVE = 0x01       # G_HOOK_FLAG_ACTIVE: attached and not destroyed
G_SOURCE_IN_CALL = 0x02      # G_HOOK_FLAG_IN_CALL: its dispatch is running
G_SOURCE_READY = 0x10
G_SOURCE_CAN_RECURSE = 0x20
G_SOURCE_BLOCKED = 0x40
GSOURCE_FLAGS = [
    (G_SOURCE_ACTIVE, "ACTIVE"), (G_SOURCE_IN_CALL, "IN_CALL"), (G_SOURCE_READY, "READY"),
    (G_SOURCE_CAN_RECURSE, "CAN_RECURSE"), (G_SOURCE_BLOCKED, "BLOCKED"),
]
GSOURCE_KNOWN_FLAG_BITS = 0x7F

G_PRIORITY_DEFAULT_IDLE = 200
# Bounds no live GSource exceeds; a value beyond them is damage, not a fact.
MAX_REF_COUNT = 1 << 24
MAX_PRIORITY = 1 << 20

# --- GSource states: the one vocabulary of `qemu gsource`, the census, the report --------
ATTACHED = "attached"                    # ACTIVE, in a context
DISPATCHING = "dispatching"              # ACTIVE and IN_CALL: its callback runs now
UNATTACHED = "unattached"                # ACTIVE, created but never attached
DESTROYED_REFERENCED = "destroyed-referenced"   # g_source_destroy() ran; a reference remains
LEAKED = "leaked"                        # destroyed-referenced, and nothing known points at it
FREED = "freed"                          # ref_count 0: finalized, memory freed or about to be
INVALID = "invalid"                      # fields no GSource can have: not (or no longer) one
UNREADABLE = "unreadable"                # its memory could not be read
STATES = (ATTACHED, DISPATCHING, UNATTACHED, DESTROYED_REFERENCED, LEAKED, FREED, INVALID)
STATE_MEANINGS = {
    ATTACHED: "ACTIVE and attached to a context",
    DISPATCHING: "ACTIVE, its dispatch running (IN_CALL)",
    UNATTACHED: "ACTIVE, created but not attached to a context",
    DESTROYED_REFERENCED: "destroyed (ACTIVE clear) and still referenced",
    LEAKED: "destroyed, still referenced, and nothing known points at it",
    FREED: "ref_count 0: finalized and freed",
    INVALID: "fields no GSource has: not a GSource (any more)",
    UNREADABLE: "memory unreadable",
}


def impossible_field(ref_count, flags, priority):
    """Why these GSource fields cannot belong to a GSource (a short reason), or None."""
    if ref_count >= MAX_REF_COUNT:
        return "ref_count out of range"
    if flags & ~GSOURCE_KNOWN_FLAG_BITS:
        return "unknown flag bits"
    if not -MAX_PRIORITY < priority < MAX_PRIORITY:
        return "priority out of range"
    return None


def gsource_state(ref_count, flags, context, priority=0):
    """The state a GSource's own fields show (see STATE_MEANINGS).

    Destruction wins over dispatch: a source destroyed from inside its own callback has
    IN_CALL set and ACTIVE clear, and what matters is that it is destroyed and referenced.
    ``leaked`` needs owners, so only the census says it (``analysis.census.classify``).
    """
    if ref_count is None or flags is None:
        return UNREADABLE
    if impossible_field(ref_count, flags, priority or 0):
        return INVALID
    if ref_count == 0:
        return FREED
    if not flags & G_SOURCE_ACTIVE:
        return DESTROYED_REFERENCED
    if flags & G_SOURCE_IN_CALL:
        return DISPATCHING
    return ATTACHED if context else UNATTACHED


def gsource_flag_names(flags):
    """Names of the set GSource flag bits, e.g. ["ACTIVE", "IN_CALL"]; unknown bits in hex."""
    if flags is None:
        return []
    names = [name for bit, name in GSOURCE_FLAGS if flags & bit]
    unknown = flags & ~GSOURCE_KNOWN_FLAG_BITS
    if unknown:
        names.append(f"0x{unknown:x}")
    return names


def decode_gsource(buf, offsets=None, base=0):
    """{field: int} of the GSource image at ``buf[base:base + GSOURCE_SIZE]``."""
    offsets = offsets or GSOURCE_OFFSETS
    values = {}
    for name, off in offsets.items():
        if name in GSOURCE_U32_FIELDS:
            values[name] = struct.unpack_from("<I", buf, base + off)[0]
        elif name in GSOURCE_S32_FIELDS:
            values[name] = struct.unpack_from("<i", buf, base + off)[0]
        else:
            values[name] = struct.unpack_from("<Q", buf, base + off)[0]
    return values


# --- GSourceCallback {gint ref_count; GSourceFunc func; gpointer data; GDestroyNotify} ----
GSOURCE_CALLBACK_SIZE = 32
GSOURCE_CALLBACK_OFFSETS = {"ref_count": 0, "func": 8, "data": 16, "notify": 24}
MAX_CALLBACK_REF_COUNT = 1 << 16


def decode_gsource_callback(buf):
    """(func, data) of a GSourceCallback image, or (None, None) if it cannot be one.

    Without GLib debug info the static ``g_source_callback_funcs`` cannot be named, so a
    caller also checks that ``func`` is a known function before trusting the pair.
    """
    if buf is None or len(buf) < GSOURCE_CALLBACK_SIZE:
        return None, None
    ref = struct.unpack_from("<i", buf, GSOURCE_CALLBACK_OFFSETS["ref_count"])[0]
    func = struct.unpack_from("<Q", buf, GSOURCE_CALLBACK_OFFSETS["func"])[0]
    data = struct.unpack_from("<Q", buf, GSOURCE_CALLBACK_OFFSETS["data"])[0]
    if not 0 < ref < MAX_CALLBACK_REF_COUNT or not func:
        return None, None
    return func, data


# --- GMainContext (private) and the lists it holds ---------------------------------------
# ref_count@48 and pending_dispatches@64 in every GLib 2.56-2.86 (checked against gmain.c of
# each release); GPtrArray {gpointer *pdata; guint len}; GSourcePrivate.child_sources@0 is a
# GSList {data; next}.
CONTEXT_REF_OFFSET = 48
CONTEXT_PENDING_OFFSET = 64
MAX_CONTEXT_REF_COUNT = 1 << 20
GPTRARRAY_LEN_OFFSET = 8
GSLIST_NEXT_OFFSET = 8

# GSourceFuncs tables the census anchors on: GLib's exported ones and QEMU's own.
GLIB_SOURCE_FUNCS = ("g_idle_funcs", "g_timeout_funcs", "g_child_watch_funcs",
                     "g_unix_signal_funcs", "g_unix_fd_source_funcs", "g_io_watch_funcs")
IDLE_SOURCE_FUNCS = "g_idle_funcs"


# g_assert() failures: GLib keeps the message in ``__glib_assert_msg`` (an exported char *):
# "ERROR:[DOMAIN:]FILE:LINE:FUNCTION: assertion failed: (EXPR)".
GLIB_ASSERT_MSG_SYMBOL = "__glib_assert_msg"
_GLIB_ASSERT_RE = re.compile(r"^ERROR:(?:(?P<domain>[^:\n]+):)??(?P<file>[^:\n]+):(?P<line>\d+):"
                             r"(?P<function>[^:\n]*): (?P<message>assertion failed: "
                             r"\((?P<expression>.*)\)|.*)$", re.S)


def parse_glib_assert_message(text):
    """{file, line, function, expression, message} of a g_assert message, or None."""
    match = _GLIB_ASSERT_RE.match((text or "").strip())
    if match is None:
        return None
    out = {k: match.group(k) for k in ("file", "function", "expression", "message")}
    out["line"] = int(match.group("line"))
    return out
