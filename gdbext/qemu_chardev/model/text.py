"""Strings read from the target, shown safely: the one escaping every renderer uses.

A chardev label, a socket path or filename, a GSource name, an assertion message, a thread
name: all come from target memory (or from the process), and a crashed or hostile QEMU can
put anything there.  The readers decode target bytes as UTF-8 with each invalid byte kept as
the four characters ``\\xNN`` (``target.memory.Memory.cstring``), so every string is valid
Unicode and a valid JSON string.  What a terminal, a Markdown viewer or a JUnit consumer would
interpret is escaped when shown:

* ``printable``: control characters (C0, DEL, C1: ESC sequences, ``\\r``, NUL, CSI), the
  Unicode line and paragraph separators, bidirectional overrides and isolates (the
  "Trojan source" characters) and lone surrogates become ``\\n``, ``\\r``, ``\\t``, ``\\xNN`` or
  ``\\uNNNN``.  Text, Markdown and JUnit all start from it; JSON keeps the string as it is
  (``json.dumps`` escapes what JSON must).
* ``markdown``: ``printable``, then every character that Markdown or the HTML it allows would
  act on inside a line is backslash-escaped (CommonMark honours a backslash before any ASCII
  punctuation), so a label cannot open a link, an image, a tag, an entity, a table cell or a
  code span.
* ``markdown_code``: a code span that no backtick inside can close.

Nothing here evaluates what it is given: it only maps characters.  No gdb imports.
"""
import unicodedata

_NAMED = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}
# Bidirectional embeddings, overrides, isolates and marks: they reorder what a reader sees.
_BIDI = frozenset("\u061c\u200e\u200f\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069")
_UNSAFE_CATEGORIES = frozenset({"Cc", "Cs", "Zl", "Zp"})
# What Markdown acts on inside a line (CommonMark emphasis, code, links and images, inline
# HTML and entities; GFM tables and strikethrough; GitHub's $math$).  Line-start syntax (#, -,
# >, 1.) cannot occur: ``printable`` leaves no newline.
_MARKDOWN_SPECIALS = frozenset("\\`*_[]<>&|~$")


def _escape_char(ch):
    if ch in _NAMED:
        return _NAMED[ch]
    code = ord(ch)
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"


def is_unsafe(ch):
    """True for a character a terminal or a viewer would act on instead of showing."""
    return ch in _BIDI or unicodedata.category(ch) in _UNSAFE_CATEGORIES


def printable(value):
    """``value`` with every unsafe character escaped (see the module); None and non-strings
    are returned as they are.  Escaping what is already escaped changes nothing."""
    if not isinstance(value, str):
        return value
    if value.isprintable() and not any(ch in _BIDI for ch in value):
        return value
    return "".join(_escape_char(ch) if is_unsafe(ch) else ch for ch in value)


def printable_tree(obj):
    """A copy of a JSON-like object (dicts, lists, strings) with every string ``printable``
    (keys too): what a text renderer works on."""
    if isinstance(obj, str):
        return printable(obj)
    if isinstance(obj, dict):
        return {printable(k): printable_tree(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [printable_tree(v) for v in obj]
    return obj


def markdown(value):
    """``value`` as Markdown text that renders as exactly these characters (None -> "")."""
    if value is None:
        return ""
    text = printable(str(value))
    return "".join("\\" + ch if ch in _MARKDOWN_SPECIALS else ch for ch in text)


def markdown_code(value, in_table=False):
    """``value`` as a Markdown code span: a fence longer than any run of backticks inside, a
    space against a backtick at either end, and (in a GFM table) ``|`` escaped, the one
    escape GFM honours inside a code span in a table."""
    text = printable("" if value is None else str(value))
    longest = run = 0
    for ch in text:
        run = run + 1 if ch == "`" else 0
        longest = max(longest, run)
    fence = "`" * (longest + 1)
    if text.startswith("`") or text.endswith("`") or not text.strip():
        text = f" {text} "
    if in_table:
        text = text.replace("|", "\\|")
    return f"{fence}{text}{fence}"
