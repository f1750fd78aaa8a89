"""Counting (and stopping) the chunks of an embedding pass, for the tests of commands that go
on after a stop (``runtime.chunk_store``)."""

from mami_jax import inference


def count_chunks(monkeypatch) -> dict:
    """Makes every chunk of ``inference.embed_in_chunks`` one batch and counts the chunks it
    computes in ``state["computed"]`` (those read back are not computed); when
    ``state["stop_at"]`` is that count, the next chunk raises KeyboardInterrupt (Ctrl-C)."""
    monkeypatch.setattr(inference, "CHUNK_BATCHES", 1)
    real = inference.embed_rows
    state = {"computed": 0, "stop_at": None}

    def counted(*args, **kwargs):
        if state["computed"] == state["stop_at"]:
            raise KeyboardInterrupt
        state["computed"] += 1
        return real(*args, **kwargs)
    monkeypatch.setattr(inference, "embed_rows", counted)
    return state
