"""Incremental detokenisation: tokens in, text out, never a partial character or a piece of a stop string."""

from __future__ import annotations


class TextStream:
    """Streams text for one generation, holding back partial characters and possible stop strings."""

    def __init__(self, tokenizer, stops: list[str]) -> None:
        self.tok, self.stops, self.ids, self.sent, self.stopped = tokenizer, [s for s in stops if s], [], "", False

    def _cut(self, text: str) -> str:
        """The text before the first stop string (setting `stopped`), or all of it."""
        for s in self.stops:
            if s in text:
                text, self.stopped = text[: text.index(s)], True
        return text

    def push(self, token: int) -> str:
        """Add a token; return the text that is now safe to send."""
        self.ids.append(token)
        text = self._cut(self.tok.decode(self.ids))
        if not self.stopped:
            if text.endswith("\ufffd"):
                return ""  # a multi-byte character is not complete yet
            hold = max((len(s) - 1 for s in self.stops), default=0)
            safe = len(text)
            for k in range(hold, 0, -1):  # keep back a tail that could still become a stop string
                if any(s.startswith(text[-k:]) for s in self.stops):
                    safe = len(text) - k
                    break
            text = text[:safe]
        new, self.sent = text[len(self.sent) :], text if len(text) >= len(self.sent) else self.sent
        return new

    def flush(self) -> str:
        """Whatever was held back, at the end of generation."""
        text = self._cut(self.tok.decode(self.ids))
        new, self.sent = text[len(self.sent) :], text
        return new
