"""wdbound.integrations: the monitor as a Hugging Face Trainer callback, on a tiny GPT-2 trained by Trainer on a
small text shipped with the tests (character-level, no tokenizer)."""

from pathlib import Path

import numpy as np
import pytest
import torch

import wdbound

TEXT = Path(__file__).resolve().parent / "data" / "tiny.txt"


def _setup(transformers):
    text = TEXT.read_text()
    vocab = sorted(set(text))
    ids = torch.tensor([vocab.index(c) for c in text])
    chunks = ids[: (len(ids) // 17) * 17].view(-1, 17)
    train = [{"input_ids": c[:-1], "labels": c[:-1]} for c in chunks[:24]]  # the model shifts its labels
    evaluation = ({"input_ids": chunks[24:32, :-1]}, chunks[24:32, 1:])  # wdbound does not: next-token targets
    config = transformers.GPT2Config(vocab_size=len(vocab), n_positions=16, n_embd=8, n_layer=1, n_head=2,
                                     attn_implementation="eager", resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0,
                                     bos_token_id=0, eos_token_id=0)
    return config, train, evaluation


def _trained(transformers, config, train, tmp_path, callbacks=()):
    torch.manual_seed(0)
    model = transformers.GPT2LMHeadModel(config)
    args = transformers.TrainingArguments(output_dir=str(tmp_path / "out"), max_steps=6, per_device_train_batch_size=4,
                                          learning_rate=1e-3, weight_decay=0.1, report_to=[], save_strategy="no",
                                          use_cpu=True, seed=0, disable_tqdm=True, logging_steps=100)
    trainer = transformers.Trainer(model=model, args=args, train_dataset=train, callbacks=list(callbacks))
    trainer.train()
    return model, trainer


def test_trainer_callback_records_without_changing_training(tmp_path):
    import transformers  # with accelerate, a test extra: the test runs, never skips
    from wdbound.integrations import HuggingFaceMonitor
    from wdbound.monitor import preconditioner_scale

    config, train, evaluation = _setup(transformers)
    callback = HuggingFaceMonitor(evaluation, every=2, path=tmp_path / "curvature.jsonl",
                                  quantities=("loss", "sharpness", "preconditioned_sharpness"))
    watched, trainer = _trained(transformers, config, train, tmp_path, [callback])
    plain, _ = _trained(transformers, config, train, tmp_path)
    for a, b in zip(plain.parameters(), watched.parameters()):
        assert torch.equal(a, b)  # the records changed nothing
    records = callback.monitor.records
    assert [r.step for r in records] == [2, 4, 6]
    assert len((tmp_path / "curvature.jsonl").read_text().splitlines()) == 3
    # The last record is the trained model's: against the dense Hessian and Adam's own preconditioner.
    H = wdbound.Hessian(watched, evaluation, progress=False)
    dense = H.dense()
    assert records[-1].sharpness[0] == pytest.approx(np.linalg.eigvalsh(dense)[-1], rel=1e-8)
    scale = preconditioner_scale(trainer.optimizer, watched, H.operator.names).numpy()
    expected = np.linalg.eigvalsh(scale[:, None] * dense * scale[None, :])[-1]
    assert records[-1].preconditioned_sharpness == pytest.approx(expected, rel=1e-8)
