"""Report text made safe for a Markdown table cell (a leaf: no project imports; used by the
reports and the checkup's mechanism card)."""

from __future__ import annotations

import re
from typing import Any

# Backslash-escaped: emphasis (``*``; ``_`` at a word's edge, where it can open or close),
# ``$...$`` math (GitHub renders it), links, and ``~`` touching a word (strikethrough).
_MARKUP = re.compile(r"[*$\[\]]|(?<![0-9A-Za-z])_|_(?![0-9A-Za-z])|~(?=\S)|(?<=\S)~")


def md_cell(x: Any) -> str:
    """``x`` as text for a Markdown table cell, shown as written: one line; backslashes and
    inline markup escaped; ``&`` and ``<`` as entities (GitHub renders some HTML: no tag can
    open); ``|`` escaped (no cell break); a backtick as a quote (no code span)."""
    text = " ".join(str(x).split()).replace("\\", "\\\\")
    text = _MARKUP.sub(lambda m: "\\" + m.group(), text)
    text = text.replace("&", "&amp;").replace("<", "&lt;")
    return text.replace("|", "\\|").replace("`", "'")
