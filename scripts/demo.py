"""The one-command demo (``make demo``): dataset → train → export → serve → score with the CLI.

Offline by default on the built-in synthetic dataset; ``DATASET=mvtec CATEGORY=bottle`` trains on MVTec
AD instead (downloaded by anomalib where the network allows); ``MODEL=padim`` fits PaDiM instead of the
default PatchCore (as the model ``<category>-padim``). A model already in the repository for the
category is reused when it is of the same family, so a second run only serves and scores (``--retrain``
forces training).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path

from visinspect_api.model_repository import list_versions, read_metadata
from visinspect_server.local import LocalServer
from visinspect_training.defaults import DEFAULT_MODEL, MODEL_FAMILIES

BIN = Path(sys.executable).parent


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dataset", default=os.environ.get("DATASET") or "synthetic", choices=("synthetic", "mvtec"))
    parser.add_argument("--category", default=os.environ.get("CATEGORY") or None)
    parser.add_argument("--model", default=os.environ.get("MODEL") or DEFAULT_MODEL, choices=MODEL_FAMILIES)
    parser.add_argument("--data-root", type=Path, default=None)
    parser.add_argument("--repository", type=Path, default=Path("model_repository"))
    parser.add_argument("--output", type=Path, default=Path("demo-output"))
    parser.add_argument("--retrain", action="store_true")
    args = parser.parse_args()
    category = args.category or ("brick" if args.dataset == "synthetic" else "bottle")
    data_root = args.data_root or Path("data/synthetic" if args.dataset == "synthetic" else "datasets/MVTecAD")
    name = category if args.model == DEFAULT_MODEL else f"{category}-{args.model}"

    versions = list_versions(args.repository / name)
    latest = read_metadata(args.repository / name / str(versions[-1])) if versions else None
    if args.retrain or latest is None or latest.architecture != args.model:
        step(f"training {args.model} on {args.dataset}/{category} and exporting to {args.repository}")
        run([BIN / "visinspect-train", "run", "--dataset", args.dataset, "--category", category,
             "--model", args.model, "--model-name", name,
             "--data-root", str(data_root), "--repository", str(args.repository)])  # fmt: skip
    else:
        step(f"reusing {args.repository / name} version {versions[-1]} ({latest.architecture})")

    step("starting the server (embedded OpenVINO backend)")
    with LocalServer(args.repository) as server:
        step(f"scoring {data_root / category / 'test'} through the CLI against {server.address}")
        status = run(
            [BIN / "visinspect", "predict", str(data_root / category / "test"), "--server", server.address,
             "--model", name, "--evaluate", "--overlays", str(args.output / "overlays")],
            check=False,
        )  # fmt: skip
        step("stopping the server")
    step(f"overlays in {args.output / 'overlays'}")
    return status


def step(message: str) -> None:
    print(f"\n==> {message}", flush=True)


def run(command: list[object], check: bool = True) -> int:
    done = subprocess.run([str(part) for part in command], check=False)
    if check and done.returncode != 0:
        raise SystemExit(done.returncode)
    return done.returncode


if __name__ == "__main__":
    sys.exit(main())
