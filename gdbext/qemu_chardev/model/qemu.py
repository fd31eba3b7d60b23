"""QEMU facts, defined once: socket chardev states, the functions that matter, frame roles.

What a QEMU function name or source file means for this tool (the write path, the
disconnect path, lock functions, thread plumbing) is decided here and imported everywhere
else: the readers, the finding rules, the live watch and the renderers.  No gdb imports.
"""

# enum TCPChardevState (chardev/char-socket.c, include/chardev/char-socket.h since 6.0)
TCP_CHARDEV_STATES = {0: "disconnected", 1: "connecting", 2: "connected"}
TCP_CHARDEV_STATE_PREFIX = "TCP_CHARDEV_STATE_"


def socket_state_name(enumerator_or_value):
    """'connected' from TCP_CHARDEV_STATE_CONNECTED (or from its value 2)."""
    if enumerator_or_value is None:
        return None
    if isinstance(enumerator_or_value, int):
        return TCP_CHARDEV_STATES.get(enumerator_or_value, f"unknown({enumerator_or_value})")
    name = str(enumerator_or_value)
    prefix = TCP_CHARDEV_STATE_PREFIX
    return name[len(prefix):].lower() if name.startswith(prefix) else name.lower()


# SocketChardev fields that hold a GSource reference of their own.
SOCKET_GSOURCE_FIELDS = ("hup_source", "telnet_source", "reconnect_timer")


# QEMU callbacks whose untyped argument (a QIOTask's opaque, a GSource's callback data) is the
# Chardev (chardev/char-socket.c in 5.2-10.2), and the names that argument goes by.
CHARDEV_CALLBACKS = frozenset({"qemu_chr_socket_connected", "tcp_chr_tls_handshake",
                               "tcp_chr_websock_handshake", "tcp_chr_hup",
                               "socket_reconnect_timeout", "tcp_chr_read"})
CALLBACK_DATA_ARGUMENTS = ("opaque", "user_data", "data")

# GLib's dispatch machinery: a frame in it means a GSource callback or finalizer runs.
GSOURCE_DISPATCH_PREFIXES = ("g_main_dispatch", "g_main_context_dispatch", "g_source_",
                             "g_main_context_iterate", "io_watch_poll_", "qio_channel_fd_source_",
                             "qio_channel_socket_source_", "aio_ctx_")


# The socket chardev write path (what `ioc-null-during-write` looks for).
WRITE_ENTRY = "tcp_chr_write"
CHANNEL_WRITE_PREFIXES = ("qio_channel_writev", "qio_channel_write", "io_channel_send",
                          "qio_channel_socket_writev")
# Frames on the way into chr_write_lock (qemu_chr_write_buffer takes it in every version).
WRITE_PATH_FUNCTIONS = frozenset({"qemu_chr_write_buffer", "qemu_chr_write", WRITE_ENTRY,
                                  "qemu_chr_fe_write", "qemu_chr_fe_write_all"})
# Functions that hold chr_write_lock by design besides the write path (QEMU 4.2+).
LOCKED_DISCONNECT_FUNCTIONS = frozenset({"tcp_chr_disconnect", "tcp_chr_disconnect_locked",
                                         "socket_reconnect_timeout"})
# Functions that clear s->ioc (chardev/char-socket.c).
DISCONNECT_FUNCTIONS = frozenset({"tcp_chr_disconnect", "tcp_chr_disconnect_locked",
                                  "tcp_chr_free_connection", "char_socket_finalize"})
# QEMU's lock implementations: a thread waiting for a QemuMutex sits in one of them.
LOCK_IMPL_FUNCTIONS = ("qemu_mutex_lock_impl", "qemu_rec_mutex_lock_impl")
LOCK_FUNCTIONS = frozenset({*LOCK_IMPL_FUNCTIONS,
                            "pthread_mutex_lock", "___pthread_mutex_lock", "__lll_lock_wait",
                            "lll_mutex_lock_optimized", "futex_wait"})
EVENT_FUNCTIONS = frozenset({"qemu_chr_be_event"})
# A thread in one of these is dying (abort, a failed assert), not waiting, whatever is below.
ABORT_FUNCTIONS = frozenset({"abort", "__assert_fail", "__assert_fail_base", "raise",
                             "__GI_raise", "__GI_abort", "__pthread_kill_implementation",
                             "__pthread_kill_internal", "pthread_kill", "__pthread_kill",
                             "g_assertion_message", "g_assertion_message_expr",
                             "g_assertion_message_error", "g_assertion_message_cmpnum",
                             "g_assertion_message_cmpstr", "g_error", "qemu_abort"})


def display_path(path):
    """A source path as shown to people: QEMU's headers as "include/...", not the absolute
    path of the build machine's source tree."""
    if path and path.startswith("/") and "/include/" in path:
        return "include/" + path.rsplit("/include/", 1)[1]
    return path


def display_location(frame):
    return f"{display_path(frame.file)}:{frame.line}" if frame.file else None


def is_channel_write(function):
    return bool(function) and function.startswith(CHANNEL_WRITE_PREFIXES)


def in_write_path(function):
    return function == WRITE_ENTRY or is_channel_write(function)


def frame_roles(frame):
    """What a frame is about: a subset of chardev, channel, task, gsource, lock, write-path."""
    roles = []
    function = frame.function or ""
    file = frame.file or ""
    types = {ptype for _name, ptype, _value in (frame.pointers or ())}
    if file.startswith("chardev/") or types & {"Chardev", "SocketChardev"} \
            or function.startswith(("qemu_chr_", "tcp_chr_")):
        roles.append("chardev")
    if file.startswith("io/channel") or types & {"QIOChannel", "QIOChannelSocket"} \
            or function.startswith(("qio_channel", "io_channel")):
        roles.append("channel")
    if function.startswith("qio_task") or file == "io/task.c" or "QIOTask" in types:
        roles.append("task")
    if function.startswith(GSOURCE_DISPATCH_PREFIXES) or types & {"GSource", "_GSource"}:
        roles.append("gsource")
    if function in LOCK_FUNCTIONS:
        roles.append("lock")
    if function in WRITE_PATH_FUNCTIONS or is_channel_write(function):
        roles.append("write-path")
    return roles


# QEMU's thread primitives: a thread "in" them is really in their caller.
THREAD_PLUMBING_FILE = "util/qemu-thread-posix.c"


def is_thread_plumbing(frame):
    """True for QEMU's mutex/cond/event implementation frames and the lock functions."""
    return frame.file == THREAD_PLUMBING_FILE or frame.function in LOCK_FUNCTIONS


def innermost_qemu_frame(frames, skip_plumbing=True):
    """The newest frame of QEMU itself, newest first in ``frames``.

    With ``skip_plumbing`` (the default) QEMU's mutex/cond/event code and the lock functions
    are passed over, so a thread waiting for a lock is shown where it wants the lock; when
    every QEMU frame is plumbing the newest one is returned.  None without QEMU frames.
    """
    qemu_frames = [f for f in frames if f.is_qemu and f.file]
    if skip_plumbing:
        for frame in qemu_frames:
            if not is_thread_plumbing(frame):
                return frame
    return qemu_frames[0] if qemu_frames else None


def blocked_on(frames):
    """The mutex a stack (newest frame first) is blocked on, or None.

    A thread waits when frames without QEMU debug info (glibc's lock path) sit on top of
    ``qemu_mutex_lock_impl`` / ``qemu_rec_mutex_lock_impl``; the mutex is that frame's
    ``mutex`` argument (QemuMutex and QemuRecMutex start with their pthread mutex).  A thread
    that aborts in there (``qemu_mutex_lock_impl`` asserts ``mutex->initialized``) is not
    waiting: it is crashing.
    """
    for index, frame in enumerate(frames):
        if frame.function in ABORT_FUNCTIONS:
            return None         # aborting inside the lock code (e.g. a destroyed mutex)
        if frame.is_qemu:
            if frame.function in LOCK_IMPL_FUNCTIONS and index > 0:
                return frame.pointer("mutex")
            return None
    return None
