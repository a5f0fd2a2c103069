import pytest

from needlework.evaluate.evaluate import EvalConfig, evaluate_loaded


@pytest.mark.slow
def test_smollm2_answers_simple_needle_questions(make_qa_record):
    """SmolLM2-135M-Instruct finds a stated fact in ~340 tokens of filler (it gets all three on CPU)."""
    from needlework.models.load import load_model

    model, tok = load_model("smollm2")
    recs = [
        make_qa_record("n0", "mdqa", "What is the secret password?", "The secret password is Marigold.", "Marigold"),
        make_qa_record("n1", "mdqa", "What is the secret city?", "The secret city is Lisbon.", "Lisbon", gold=4),
        make_qa_record("n2", "mdqa", "What is the secret animal?", "The secret animal is a giraffe.", "giraffe", gold=0),
    ]
    df, summary = evaluate_loaded(model, tok, recs, EvalConfig(batch_size=3, n_boot=100), progress=False)
    assert df["subspan_acc"].sum() >= 1, df[["id", "output"]].to_string()
    assert (df["n_prompt_tokens"] > 250).all()
    # the gold answer is far likelier than chance (uniform over 49K tokens is about -10.8 per token)
    assert (df["gold_logprob_per_token"] > -8).all()
