"""The one exception the converter raises for bad input or output."""

from __future__ import annotations


class ConversionError(ValueError):
    """A checkpoint cannot be converted; the message names the culprit (tensor, file, key or path).

    Raised before anything is written to the final output path, so a caller that catches it
    never finds a partial checkpoint where a good one is expected.
    """
