"""wdbound.integrations: the monitor as a Hugging Face Trainer callback, on a tiny GPT-2 trained by Trainer on a
small text shipped with the tests (character-level, no tokenizer)."""

import json
import time
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
    callback = HuggingFaceMonitor(evaluation, every=2, budget=None, path=tmp_path / "curvature.jsonl",
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


def _scalars(log_dir):
    """Every scalar of a TensorBoard log directory, read back from its event files: {tag: [(step, value)]}."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(log_dir), size_guidance={"scalars": 0, "histograms": 0}).Reload()
    scalars = {tag: [(e.step, e.value) for e in events.Scalars(tag)] for tag in events.Tags()["scalars"]}
    return scalars, {tag: events.Histograms(tag) for tag in events.Tags()["histograms"]}


def test_trainer_callback_writes_tensorboard_events_read_back(tmp_path):
    import transformers

    from wdbound.integrations import HuggingFaceMonitor

    config, train, evaluation = _setup(transformers)
    callback = HuggingFaceMonitor(evaluation, every=3, budget=None, tensorboard=tmp_path / "tb",
                                  quantities=("loss", "accuracy", "sharpness", "updates"))
    _trained(transformers, config, train, tmp_path, [callback])
    scalars, histograms = _scalars(tmp_path / "tb")
    records = callback.monitor.records
    assert [s for s, _ in scalars["wdbound/lambda_1"]] == [r.step for r in records] == [3, 6]
    assert [v for _, v in scalars["wdbound/lambda_1"]] == pytest.approx([r.sharpness[0] for r in records], rel=1e-6)
    assert [v for _, v in scalars["wdbound/accuracy"]] == pytest.approx([r.accuracy for r in records], rel=1e-6)
    wte = histograms["wdbound/updates/transformer.wte.weight"]
    assert wte[-1].step == 6 and wte[-1].histogram_value.num == callback.monitor.model.transformer.wte.weight.numel()


class _Digits:
    """A LightningModule on the digits: an MLP in ``net``, AdamW, a plain loop over a fixed-order loader."""

    @staticmethod
    def build(lightning):
        from torch import nn

        class Module(lightning.LightningModule):
            def __init__(self):
                super().__init__()
                self.net = nn.Sequential(nn.Linear(64, 12), nn.Tanh(), nn.Linear(12, 10))

            def forward(self, x):
                return self.net(x)

            def training_step(self, batch, index):
                return torch.nn.functional.cross_entropy(torch.nn.functional.dropout(self(batch[0]), 0.1), batch[1])

            def configure_optimizers(self):
                return torch.optim.AdamW(self.parameters(), lr=3e-3, weight_decay=0.05)

        return Module

    @staticmethod
    def fit(lightning, callbacks=()):
        data = wdbound.load_dataset("digits", "train")
        x = torch.stack([data[i][0] for i in range(320)]).flatten(1)
        y = torch.tensor([data[i][1] for i in range(320)])
        torch.manual_seed(0)
        module = _Digits.build(lightning)()
        loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y), batch_size=32)
        trainer = lightning.Trainer(max_epochs=2, callbacks=list(callbacks), logger=False, accelerator="cpu",
                                    enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False)
        trainer.fit(module, loader)
        return module, trainer


def test_lightning_callback_records_without_changing_training(tmp_path):
    import lightning  # a test extra: the test runs, never skips

    from wdbound.integrations import LightningMonitor
    from wdbound.monitor import preconditioner_scale

    data = wdbound.load_dataset("digits", "train")
    evaluation = (torch.stack([data[i][0] for i in range(160)]).flatten(1),
                  torch.tensor([data[i][1] for i in range(160)]))
    callback = LightningMonitor(evaluation, every=5, budget=None, path=tmp_path / "curves.jsonl",
                                tensorboard=tmp_path / "tb", quantities=("loss", "accuracy", "sharpness",
                                                                        "preconditioned_sharpness", "updates"))
    watched, trainer = _Digits.fit(lightning, [callback])
    plain, _ = _Digits.fit(lightning)
    for a, b in zip(plain.parameters(), watched.parameters()):
        assert torch.equal(a, b)  # the records changed nothing
    records = callback.monitor.records
    assert [r.step for r in records] == [5, 10, 15, 20] and trainer.global_step == 20  # 2 epochs x 10 batches
    assert len((tmp_path / "curves.jsonl").read_text().splitlines()) == 4
    H = wdbound.Hessian(watched, evaluation, progress=False)
    dense = H.dense()
    assert records[-1].sharpness[0] == pytest.approx(np.linalg.eigvalsh(dense)[-1], rel=1e-8)
    scale = preconditioner_scale(trainer.optimizers[0], watched, H.operator.names).numpy()
    expected = np.linalg.eigvalsh(scale[:, None] * dense * scale[None, :])[-1]
    assert records[-1].preconditioned_sharpness == pytest.approx(expected, rel=1e-8)
    scalars, histograms = _scalars(tmp_path / "tb")
    assert [v for _, v in scalars["wdbound/preconditioned_sharpness"]] == pytest.approx(
        [r.preconditioned_sharpness for r in records], rel=1e-6)
    assert histograms["wdbound/updates/net.0.weight"][-1].histogram_value.num == 64 * 12
    frame = callback.monitor.to_pandas()
    assert frame["step"].tolist() == [5, 10, 15, 20]
    assert frame["lambda_max"].tolist() == [r.sharpness[0] for r in records]


def test_wandb_offline_run_receives_every_record(tmp_path, monkeypatch):
    import wandb

    from wdbound.monitor import Monitor

    monkeypatch.setenv("WANDB_SILENT", "true")
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(4, 6), torch.nn.Tanh(), torch.nn.Linear(6, 3))
    x, y = torch.randn(40, 4), torch.randint(0, 3, (40,))
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    run = wandb.init(mode="offline", dir=str(tmp_path), project="wdbound-test", settings=wandb.Settings(console="off"))
    monitor = Monitor(model, optimizer, (x, y), every=2, budget=None, wandb=run,
                      quantities=("loss", "sharpness", "preconditioned_sharpness", "updates"))
    for _ in range(4):
        optimizer.zero_grad()
        torch.nn.functional.cross_entropy(model(x), y).backward()
        optimizer.step()
        monitor.step()
    monitor.close()
    run.finish()
    path = next(tmp_path.glob("wandb/offline-run-*/run-*.wandb"))  # the run's own record file
    logged, deadline = path.read_bytes(), time.monotonic() + 60
    while b"wdbound/updates/0.weight" not in logged and time.monotonic() < deadline:
        time.sleep(0.5)  # under load W&B's writer process can flush after finish() returns (seen once in CI)
        logged = path.read_bytes()
    for record in monitor.records:
        for name, value in record.scalars().items():
            assert f"wdbound/{name}".encode() in logged
            if name != "seconds":  # W&B writes a whole float as an integer: 30.0 as 30
                assert json.dumps(int(value) if value == int(value) else value).encode() in logged
    assert b"wdbound/updates/0.weight" in logged
