"""The one rule for the reason text sent with VT.FAIL (dead-letter or retry, single or batch
tasks, a refused result)."""

#: a VT.FAIL reason is at most this many characters: at most 64,000 bytes of UTF-8, under the
#: broker's 64 KiB limit (PROTOCOL.md), whatever the characters
MAX_ERROR_CHARS = 16_000


def clean_text(text: str) -> str:
    """``text`` that encodes as UTF-8: lone surrogates (an undecodable file name in an exception
    message, say) become ``\\udcxx`` escapes instead of making every write of it fail."""
    try:
        text.encode()
        return text
    except UnicodeEncodeError:
        return text.encode("utf-8", "backslashreplace").decode()


def fail_reason(text: str) -> str:
    """Valid UTF-8, at most MAX_ERROR_CHARS characters (the rest cut, and said so)."""
    text = clean_text(text)
    if len(text) > MAX_ERROR_CHARS:
        keep = MAX_ERROR_CHARS - 48
        text = f"{text[:keep]}\n... [{len(text) - keep} characters cut]"
    return text
