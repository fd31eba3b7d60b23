"""glibc facts, defined once: malloc chunk headers and safe-linked free lists (x86-64).

GLib's g_malloc/g_free are malloc/free, so every QOM object, QIOTask and GSource lives in a glibc
malloc chunk.  The header layout is fixed for x86-64 glibc and needs no glibc debug info; the
free-list encoding (safe-linking) is glibc >= 2.32 (Debian 11 and later).  No gdb imports.
"""
import re

CHUNK_HEADER_SIZE = 16          # prev_size, size; the user pointer follows
SIZE_WORD_OFFSET = -8           # the size word, relative to the user pointer
PREV_INUSE = 0x1
IS_MMAPPED = 0x2
NON_MAIN_ARENA = 0x4
SIZE_FLAG_BITS = 0x7
MALLOC_ALIGNMENT = 16
MIN_CHUNK_SIZE = 32
# Chunks up to this size (user requests up to 1032 bytes) go to the per-thread tcache first.
TCACHE_MAX_CHUNK_SIZE = 1040
# Beyond this a size word is not believable for the small objects this tool looks at.
MAX_PLAUSIBLE_CHUNK_SIZE = 1 << 30


def chunk_size(size_word):
    """The chunk size a size word encodes (flags stripped)."""
    return size_word & ~SIZE_FLAG_BITS


def reveal(field_address, stored):
    """The pointer a safe-linked free-list field holds (glibc's REVEAL_PTR): ``stored`` XOR
    the field's own address shifted right by 12.  The last entry of a list reveals 0."""
    return stored ^ (field_address >> 12)


def plausible_size_word(size_word, object_size=0):
    """True when ``size_word`` can head a malloc chunk holding ``object_size`` bytes."""
    size = chunk_size(size_word)
    if size_word & IS_MMAPPED:
        return size % 4096 == 0 and size >= object_size + CHUNK_HEADER_SIZE
    return (MIN_CHUNK_SIZE <= size <= MAX_PLAUSIBLE_CHUNK_SIZE and size % MALLOC_ALIGNMENT == 0
            and size >= object_size + CHUNK_HEADER_SIZE - 8)


# glibc's __assert_fail stores its message in ``__abort_msg`` (a GLIBC_PRIVATE export, so a
# minimal symbol even without libc debug info): struct abort_msg_s {unsigned int size; char
# msg[];}.  The message: "PROGRAM: FILE:LINE: FUNCTION: Assertion `EXPR' failed.\n".
ABORT_MSG_SYMBOL = "__abort_msg"
ABORT_MSG_TEXT_OFFSET = 4
ABORT_MSG_LIMIT = 4096
_ASSERT_RE = re.compile(r"^(?:(?P<program>[^:\n]*): )?(?P<file>[^:\n]+):(?P<line>\d+): "
                        r"(?:(?P<function>[^\n]*?): )?Assertion [`'](?P<expression>.*)' "
                        r"failed\.", re.S)


def parse_assert_message(text):
    """{program, file, line, function, expression} of glibc's assertion message, or None."""
    match = _ASSERT_RE.match(text or "")
    if match is None:
        return None
    out = match.groupdict()
    out["line"] = int(out["line"])
    return out
