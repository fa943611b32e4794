"""The demo's last step: classify images that training never saw with a batch predict job, and write a CSV."""
from __future__ import annotations

from collections import Counter
from itertools import islice
from pathlib import Path

from graft.cli.client import ProgressPrinter
from graft.cli.sampledata import make_shapes_dataset
from graft.client import Client

HELD_BACK_PER_CLASS = 5
PREVIEW_ROWS = 5


def _say(message: str) -> None:
    print(f"==> {message}", flush=True)


def held_back_folder(var: Path, data: str | None, data_dir: Path) -> tuple[Path | None, str]:
    """The folder the demo classifies after training, and what it is (None when there is none)."""
    if not data:
        folder = var / "demo-data" / "held-back"
        if not folder.is_dir():
            # Another seed than the training set's: new shapes, colours and positions, which training never sees.
            make_shapes_dataset(folder, per_class=HELD_BACK_PER_CLASS, size=128, seed=1)
        return folder, f"{HELD_BACK_PER_CLASS} generated images per class, held back from training, in {folder}"
    if (data_dir / "val").is_dir():
        # Honest about it: training picked its best epoch on val/, so this is a check, not an unbiased test.
        return data_dir / "val", f"your DATA's val/ folder (training chose its best epoch on it), {data_dir / 'val'}"
    return None, "DATA has no val/ folder and training used every other image: no held-back images to classify"


def classify_held_back(client: Client, model_id: str, folder: Path | None, what: str, out: Path) -> bool:
    """Upload folder, run a predict job on it, print the first rows and the counts per label, write out (CSV)."""
    if folder is None:
        _say(f"skipping batch prediction: {what}")
        return True
    _say(f"classifying {what}")
    job = client.predict_folder(model_id, folder)
    _say(f"submitted predict job {job['id']}")
    job = client.wait(job["id"], ProgressPrinter(), interval=0.5)
    if job["status"] != "succeeded":
        print(f"predict job {job['id']} {job['status']}: {job.get('error') or ''}")
        return False
    rows = list(client.results(job["id"]))
    print(f"{'path':<36}{'label':<16}{'confidence':>10}")
    for row in islice(rows, PREVIEW_ROWS):
        label = row["label"] or f"(error: {row['error']})"
        confidence = f"{row['confidence']:.3f}" if row["confidence"] is not None else "-"
        print(f"{row['path']:<36}{label:<16}{confidence:>10}")
    if len(rows) > PREVIEW_ROWS:
        print(f"... {len(rows) - PREVIEW_ROWS} more")
    print("images per predicted label:")
    for label, count in sorted(Counter(r["label"] or "(error)" for r in rows).items()):
        print(f"  {label:<24}{count:>6}")
    # Images sorted into class folders carry their true label in their path: say how many the model got right.
    classes = set(client.model(model_id)["classes"])
    known = [r for r in rows if r["path"].split("/")[0] in classes]
    if known:
        right = sum(r["label"] == r["path"].split("/")[0] for r in known)
        print(f"agree with their folder's class: {right}/{len(known)}")
    out.parent.mkdir(parents=True, exist_ok=True)
    with open(out, "wb") as handle:
        client.results_csv(job["id"], handle)
    _say(f"all {len(rows)} predictions (path,label,confidence,error) are in {out}")
    return True
