"""DNA-Det: the network as documented, both training stages (and resume), the evaluation outputs, the detector's
attribution, and the attribution on the wire: the miner sends it, validators record it, old validators ignore it."""
import asyncio
import json
import sys
from pathlib import Path
from types import SimpleNamespace
from typing import Optional

import numpy as np
import pytest
import torch
from PIL import Image
from pydantic import BaseModel, Field, ValidationError

from base_miner import train_dnadet as td
from base_miner.train import save_weights
from base_miner.transforms_bank import get_bank
from bitmind_lite.config import MinerConfig
from bitmind_lite.detectors import create_detector
from bitmind_lite.detectors.checkpoint import CheckpointError, load_state_dict
from bitmind_lite.detectors.checkpoint import default_weights
from bitmind_lite.detectors.dnadet import DNADetector, DNANet, ai_logit
from bitmind_lite.miner.batcher import Batcher
from bitmind_lite.miner.run import build_detector
from bitmind_lite.protocol import Attribution, DetectResponse, encode_image, parse_detect_answer, read_detect_answer
from bitmind_lite.validator.loop import attribution_record
from bitmind_lite.validator.query import Answer, MinerClient, Target, challenge_body
from bitmind_lite.validator.reward import History, challenge_reward

sys.path.insert(0, str(Path(__file__).parent))
from miner_support import body_of, keypair, post, subnet  # noqa: E402,F401

CLASSES = ("real", "alpha", "beta")
TINY = ["--classes", ",".join(CLASSES), "--nf", "4", "--size", "64", "--batch", "2", "--per_class", "1",
        "--views", "2", "--save_every", "1", "--log_every", "1", "--device", "cpu"]


def toy(rng: np.random.Generator, cls: str, side: int = 64) -> Image.Image:
    """real: noise; alpha: 2x nearest up-sampled noise; beta: 2x bilinear (two 'architectures' a net can tell)."""
    if cls == "real":
        return Image.fromarray(rng.integers(0, 256, (side, side, 3), dtype=np.uint8))
    small = Image.fromarray(rng.integers(0, 256, (side // 2, side // 2, 3), dtype=np.uint8))
    return small.resize((side, side), Image.NEAREST if cls == "alpha" else Image.BILINEAR)


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("dnadet") / "data"
    rng = np.random.default_rng(0)
    for split, n in (("train", 3), ("test", 2), ("test_seen", 1), ("pretrain", 3)):
        for c in CLASSES if split != "pretrain" else ("",):
            for i in range(n):
                td.save_png(toy(rng, c or "real"), root / split / c / f"{i:04d}.png")
    return root


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    """A random nf=4 DNA-Det over CLASSES, with its class list in the sidecar, as the trainer writes it."""
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("weights") / "dnadet.pth"
    save_weights(DNANet(len(CLASSES), nf=4).state_dict(), path, {"classes": list(CLASSES), "nf": 4})
    return path


def detector(weights, **kw):
    return create_detector("dnadet", weights=weights, device="cpu", input_size=64, **kw)


# ---------------------------------------------------------------- the network
@pytest.mark.parametrize("nf,classes,params,head", [(64, 5, 5_897_349, 328_320), (16, 15, 372_015, 33_024)])
def test_shapes_and_parameter_counts_are_as_documented(nf, classes, params, head):
    net = DNANet(classes, nf=nf).eval()
    assert sum(p.numel() for p in net.parameters()) - sum(p.numel() for p in net.head.parameters()) == params
    assert sum(p.numel() for p in net.head.parameters()) == head
    x = torch.randn(2, 3, 64, 64)
    assert net.features(x).shape == (2, 8 * nf, 4, 4)  # four stride-2 stages: H / 16
    logits, z = net.forward_train(x)
    assert logits.shape == (2, classes) and z.shape == (2, 128)
    assert torch.allclose(z.norm(dim=1), torch.ones(2), atol=1e-5)
    assert not torch.allclose(logits.softmax(1).sum(1), logits.sum(1))  # logits, not probabilities
    assert net(torch.randn(1, 3, 128, 96)).shape == (1, classes)  # whole images at test time (GAP)
    assert torch.allclose(torch.sigmoid(ai_logit(logits)), 1 - logits.softmax(1)[:, 0], atol=1e-6)


def test_supcon_matches_its_definition_and_rewards_clustered_views():
    torch.manual_seed(0)
    feats = torch.nn.functional.normalize(torch.randn(4, 3, 8), dim=2)
    labels = torch.tensor([0, 1, 0, 2])
    z, y = feats.reshape(12, 8), labels.repeat_interleave(3)
    expected = []
    for i in range(12):  # Khosla et al. eq. 2, written out
        others = [j for j in range(12) if j != i]
        denom = torch.logsumexp(torch.stack([z[i] @ z[j] / 0.07 for j in others]), 0)
        pos = [j for j in others if y[j] == y[i]]
        expected.append(-torch.stack([z[i] @ z[j] / 0.07 - denom for j in pos]).mean())
    assert td.supcon_loss(feats, labels, 0.07).item() == pytest.approx(torch.stack(expected).mean().item(), rel=1e-5)
    clustered = torch.nn.functional.normalize(torch.eye(8)[labels][:, None, :].repeat(1, 3, 1)
                                              + 0.01 * torch.randn(4, 3, 8), dim=2)
    assert td.supcon_loss(clustered, labels) < td.supcon_loss(feats, labels)


def test_transform_banks():
    full = get_bank("full")
    kinds = [t.kind for t in full]
    assert len({t.name for t in full}) == 170
    assert {k: kinds.count(k) for k in set(kinds)} == {"jpeg": 24, "double_jpeg": 24, "gaussian_blur": 14,
                                                       "median_blur": 14, "resize": 80, "gaussian_noise": 14}
    img = np.asarray(toy(np.random.default_rng(1), "real"))
    for t in get_bank("reduced"):
        out = t(img, np.random.default_rng(0))
        assert out.shape == img.shape and out.dtype == np.uint8 and not np.array_equal(out, img), t.name
    with pytest.raises(ValueError, match="unknown transform bank"):
        get_bank("nope")


# ---------------------------------------------------------------- training and evaluation
def test_both_stages_train_resume_and_evaluate(tiny_data, tmp_path):
    out = tmp_path / "run"
    common = ["--data", str(tiny_data), "--out", str(out), *TINY]
    td.main(["--stage", "pretrain", *common, "--pretrain_steps", "2", "--max_steps", "1"])
    assert not (out / "pretrain.pth").exists() and torch.load(out / "pretrain_state.pt")["step"] == 1
    td.main(["--stage", "pretrain", *common, "--pretrain_steps", "2", "--resume"])
    assert (out / "pretrain.pth").exists()
    td.main(["--stage", "attr", *common, "--attr_steps", "2", "--max_steps", "1"])
    td.main(["--stage", "attr", *common, "--attr_steps", "2", "--resume"])
    straight = tmp_path / "straight"
    straight.mkdir()
    (straight / "pretrain.pth").write_bytes((out / "pretrain.pth").read_bytes())
    td.main(["--stage", "attr", *common[:2], "--out", str(straight), *TINY, "--attr_steps", "2"])
    resumed, once = load_state_dict(out / "dnadet.pth"), load_state_dict(straight / "dnadet.pth")
    assert all(torch.equal(resumed[k], once[k]) for k in once)  # 1 + 1 resumed step == 2 steps
    assert json.loads((out / "dnadet.meta.json").read_text())["classes"] == list(CLASSES)
    assert detector(out / "dnadet.pth").calibration.bias == pytest.approx(-np.log(2), abs=1e-6)  # 2 generators : 1

    td.main(["--stage", "eval", *common])
    result = json.loads((out / "eval.json").read_text())
    matrix = np.array(result["test"]["confusion"])
    assert matrix.shape == (3, 3) and matrix.sum() == 2 * len(CLASSES)  # every test image, reals included
    assert np.array(result["test_seen"]["confusion"])[1:].sum() == 2  # the trained-model images
    table = (out / "cross_model.md").read_text()
    assert all(f"| {c} |" in table for c in CLASSES) and "real-vs-AI" in table
    assert Image.open(out / "confusion.png").size[0] > 100


def test_data_stage_keeps_the_builders_photo_split(tmp_path):
    root = tmp_path / "data"
    td.main(["--stage", "data", "--data", str(root), "--classes", "real,nearest", "--size", "64",
             "--train_per_class", "1", "--test_per_class", "1", "--pretrain_windows", "1"])
    _, pools = td.photo_split(0)
    records = [json.loads(line) for line in (root / "records.jsonl").read_text().splitlines()]
    assert {(r["split"], r["class"]) for r in records} == {(s, c) for s in ("train", "test")
                                                           for c in ("real", "nearest")}
    assert all(r["photo"] in pools["train" if r["split"] == "train" else "test"] for r in records)
    assert Image.open(root / "test" / "nearest" / "0000.png").size == (64, 64)


# ---------------------------------------------------------------- the detector
def test_detector_answers_p_ai_and_the_top_generator(checkpoint):
    det = detector(checkpoint)
    assert det.classes == CLASSES
    batch = torch.stack([det.preprocess(toy(np.random.default_rng(i), c)) for i, c in enumerate(CLASSES)])
    p_ai, attrs = det.predict_with_attribution(batch)
    probs = det.model(batch).softmax(1)
    assert torch.allclose(p_ai, 1 - probs[:, 0], atol=1e-6) and torch.allclose(det.predict(batch), p_ai)
    for row, a in zip(probs, attrs):
        Attribution.model_validate(a)
        assert a["label"] == CLASSES[1 + int(row[1:].argmax())] and set(a["probs"]) == set(CLASSES)


def test_checkpoints_of_other_shapes_and_detectors(checkpoint, tmp_path):
    bare = tmp_path / "bare.pth"
    torch.save(DNANet(4, nf=2).state_dict(), bare)  # no sidecar: generic names, real first
    det = detector(bare)
    assert det.classes == ("real", "class1", "class2", "class3")
    det.reload(checkpoint)
    assert det.classes == CLASSES and det.predict_with_attribution(det.preprocess(toy(
        np.random.default_rng(0), "alpha"))[None])[1][0]["label"] in CLASSES[1:]
    npr = default_weights("npr")
    with pytest.raises(CheckpointError, match="not a DNA-Det checkpoint"):
        detector(npr)
    with pytest.raises(CheckpointError):
        det.reload(npr)
    assert det.classes == CLASSES  # a refused reload keeps serving the old model


def test_batcher_drops_an_attribution_the_protocol_refuses_but_keeps_the_prediction(checkpoint):
    class Overconfident(DNADetector):
        def predict_with_attribution(self, batch):
            p, _ = super().predict_with_attribution(batch)
            return p, [{"label": "alpha", "probs": {"alpha": 2.0}}] * len(p)

    det = Overconfident(weights=checkpoint, device="cpu", input_size=64)

    async def main():
        batcher = Batcher(det)
        batcher.start()
        try:
            return await batcher.submit(encode_image(toy(np.random.default_rng(0), "beta")))
        finally:
            await batcher.stop()

    prediction = asyncio.run(main())
    assert 0 <= prediction.value <= 1 and prediction.attribution is None


def test_detect_cli_prints_the_attribution(checkpoint, tmp_path, capsys):
    from bitmind_lite.detect import main

    path = tmp_path / "x.png"
    toy(np.random.default_rng(0), "alpha").save(path)
    assert main([str(path), "--detector", "dnadet", "--weights", str(checkpoint), "--device", "cpu"]) == 0
    assert "\tarchitecture=" in capsys.readouterr().out
    assert main([str(path), "--detector", "dnadet", "--weights", str(checkpoint), "--device", "cpu", "--json"]) == 0
    row = json.loads(capsys.readouterr().out)
    assert set(row["attribution"]["probs"]) == set(CLASSES) and row["attribution"]["label"] in CLASSES[1:]


# ---------------------------------------------------------------- on the wire
class LegacyDetectResponse(BaseModel):
    """protocol.DetectResponse as validators released before attribution_detail read it."""

    prediction: float = Field(..., ge=0.0, le=1.0, strict=True, allow_inf_nan=False)
    detector: str = Field("", max_length=64)
    version: str = Field("", max_length=64)
    attribution: Optional[str] = Field(None, max_length=128)


@pytest.fixture
def dnadet_miner(subnet, checkpoint):
    """The in-process miner serving `--neuron.detector dnadet` (built as neurons/miner.py builds it)."""
    from miner_support import in_process_miner

    cfg = MinerConfig.model_validate({"netuid": 1, "neuron": {"detector": "dnadet", "weights": str(checkpoint),
                                                              "device": "cpu", "input_size": 64}})
    det, _ = build_detector(cfg)
    with in_process_miner(subnet, det) as node:
        yield node


def test_miner_sends_the_attribution_and_old_validators_still_score_it(dnadet_miner):
    images = [encode_image(toy(np.random.default_rng(i), CLASSES[i % 3])) for i in range(6)]
    raws = []
    for b64 in images:
        r = post(dnadet_miner, keypair("Alice"), body_of(b64))
        assert r.status_code == 200
        raws.append(r.content)
    for raw in raws:
        answer, error = read_detect_answer(200, raw)
        assert error is None and answer.detector == "dnadet"
        detail = answer.attribution_detail
        assert set(detail.probs) == set(CLASSES) and detail.label == answer.attribution
        assert answer.prediction == pytest.approx(1 - detail.probs["real"], abs=1e-3)
    # An old validator parses the same bytes, ignores attribution_detail, and scores exactly what a new one does.
    labels = [i % 2 for i in range(len(raws))]
    old, new, bare = History(), History(), History()
    for raw, y in zip(raws, labels):
        p_new, _, error = parse_detect_answer(200, raw)
        p_old = LegacyDetectResponse.model_validate_json(raw).prediction
        assert error is None and p_old == p_new
        rewards = [challenge_reward(h, p, y, min_valid=1)[0] for h, p in ((old, p_old), (new, p_new), (bare, p_new))]
        assert rewards[0] == rewards[1] == rewards[2]
    assert len(old.valid()) == len(raws) and old.to_list() == new.to_list()
    with pytest.raises(ValidationError):  # why the probabilities are not inside `attribution` itself
        LegacyDetectResponse.model_validate({"prediction": 0.5, "attribution": {"label": "alpha"}})


def test_validator_records_the_attribution():
    guess = Attribution(label="alpha", probs={"real": 0.2, "alpha": 0.8})
    assert attribution_record(SimpleNamespace(attribution=guess)) == {"attribution": guess.model_dump()}
    assert attribution_record(SimpleNamespace(attribution=None)) == {}
    assert json.dumps(attribution_record(SimpleNamespace(attribution=guess)))  # a challenges.jsonl line


@pytest.mark.skipif("attribution" not in Answer.__dataclass_fields__,
                    reason="until validator/query.py's Answer carries the attribution (read_detect_answer)")
def test_the_validators_client_keeps_the_miners_attribution(dnadet_miner, subnet):
    async def ask():
        async with MinerClient(keypair("Alice"), timeout=30) as client:
            port = int(dnadet_miner.url.rsplit(":", 1)[1])
            body = challenge_body(encode_image(toy(np.random.default_rng(0), "alpha")))
            return await client.query(Target(subnet.uid, subnet.hotkey, "127.0.0.1", port), body)

    answer = asyncio.run(ask())
    assert answer.valid and answer.attribution.label in CLASSES[1:]
    assert attribution_record(answer)["attribution"]["probs"].keys() == set(CLASSES)


def test_answers_without_attribution_are_unchanged():
    assert json.loads(DetectResponse(prediction=0.25, detector="npr", version="v").model_dump_json()) == {
        "prediction": 0.25, "detector": "npr", "version": "v"}
