"""Review a finished run: ``kilomatch report OUTPUT`` writes ``OUTPUT/report/index.html``, a
static page with every tracked neuron, its figure, its weakest link and nearest competitor,
where a reviewer records decisions as ``curation.json`` (applied by
:mod:`kilomatch.manual_curation`)."""

from .page import build_report, main

__all__ = ["build_report", "main"]
