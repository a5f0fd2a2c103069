"""needlework.evaluate: the evaluate stage. `config` (EvalConfig), `generate` (greedy answers on
the decoding layer `needlework.models.decode`), `logprob` (teacher-forced gold log-probability),
`metrics`, `bootstrap`, and `evaluate` (the stage, writing predictions and summary)."""

__all__ = ["bootstrap", "config", "evaluate", "generate", "logprob", "metrics"]
