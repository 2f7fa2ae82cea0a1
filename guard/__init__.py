"""guard: safety and provenance for autoregressive image generators.

Watermark image-token sampling with a secret green-list pool (lexical bias), detect it with exact
statistics, and erase concepts. The embedded reference generator (`guard.models.load("reference")`)
is the default for every command.
"""

__version__ = "0.1.0"
