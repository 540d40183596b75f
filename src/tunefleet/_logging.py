"""Logging set-up for the CLI: one plain line per event on stderr, secrets redacted."""

from __future__ import annotations

import logging
import sys
import warnings

import optuna

from tunefleet._redact import RedactingFilter

__all__ = ["setup_logging"]


def setup_logging(level: int) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(
        logging.Formatter(
            "%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%Y-%m-%d %H:%M:%S"
        )
    )
    handler.addFilter(RedactingFilter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(logging.WARNING)
    logging.getLogger("tunefleet").setLevel(level)
    # Optuna logs through our handler (redacted, one format); its per-trial INFO lines would
    # duplicate ours, so only its warnings pass.
    optuna.logging.disable_default_handler()
    optuna.logging.enable_propagation()
    optuna.logging.set_verbosity(logging.WARNING)
    logging.captureWarnings(True)
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
