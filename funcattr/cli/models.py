"""Models for the ``funcattr`` command: the demo, torchvision architectures by name (with
``--weights``), ``module:factory`` callables, whole models saved with ``torch.save(model)``
(with ``--allow-pickle``); weights checked against the architecture, class names, input
normalisation and devices. Errors are ``click`` errors naming the option.

A user's module is imported as ``python -m`` would: the working folder (and, for
``path/to/file.py:FACTORY``, the file's folder) is on ``sys.path``.
"""

from __future__ import annotations

import dataclasses
import difflib
import importlib
import importlib.util
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import click
import torch
from torch import Tensor, nn

from funcattr.cli.output import first_line

#: ImageNet statistics used by torchvision's pretrained classifiers.
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
#: The built-in models of ``--model``: the CNN and the ViT trained on the demo shapes.
DEMO_MODELS = ("demo", "demo-vit")
#: ``--model FILE`` with one of these suffixes is a whole model saved with ``torch.save(model)``.
MODEL_FILE_SUFFIXES = (".pt", ".pth", ".pkl", ".ckpt")
#: Why a whole saved model needs ``--allow-pickle`` (the end of the messages that ask for it).
PICKLE_RISK = ("loading it runs code stored in the file (torch.load with weights_only=False), "
               "so only do it for files you trust")


class InputNormalization(nn.Module):
    """Normalise ``[0, 1]`` images per channel: ``(x - mean) / std``.

    The command puts it in front of models trained on normalised data, so that the explained
    input is the image itself. Composites give it the ``Pass`` rule, so LRP relevance reaches
    the image unchanged (as if the normalised image were explained, as in Zennit's example
    script), and the ZBox bounds of the first layer are the normalised images of 0 and 1.
    """

    def __init__(self, mean: Sequence[float], std: Sequence[float]) -> None:
        super().__init__()
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1))
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1))

    def forward(self, x: Tensor) -> Tensor:
        """Return ``(x - mean) / std``."""
        return (x - self.mean) / self.std


@dataclasses.dataclass
class LoadedModel:
    """A classifier ready to explain, with what the command needs to know about it.

    Attributes
    ----------
    name : str
        The ``--model`` value.
    model : torch.nn.Module
        In eval mode, ``float32``, on the device; takes ``[N, 3, S, S]`` images in ``[0, 1]``.
    input_size : int
        ``S``: images are resized so that their shorter side is ``resize`` and centre-cropped.
    resize : int
        Shorter side before cropping.
    num_classes : int
        Number of outputs.
    class_names : tuple of str or None
        Names of the outputs, if known.
    low, high : float or Tensor
        Bounds of the first layer's input for the ZBox rule (per channel if normalised).
    normalization : tuple or None
        ``(mean, std)`` applied by an :class:`InputNormalization` in front of the model.
    weights : str
        Where the weights came from.
    device : torch.device
        Where the model lives.
    """

    name: str
    model: nn.Module
    input_size: int
    resize: int
    num_classes: int
    class_names: tuple[str, ...] | None
    low: float | Tensor
    high: float | Tensor
    normalization: tuple[tuple[float, ...], tuple[float, ...]] | None
    weights: str
    device: torch.device

    def class_name(self, index: int) -> str:
        """The name of output ``index`` (its number if the names are unknown)."""
        if self.class_names is not None and 0 <= index < len(self.class_names):
            return self.class_names[index]
        return str(index)


def torchvision_names() -> list[str]:
    """The torchvision classification architectures ``--model`` accepts."""
    import torchvision.models

    return sorted(torchvision.models.list_models(module=torchvision.models))


def working_folder_importable(*folders: Path) -> None:
    """Put ``folders`` and the working folder on ``sys.path`` (first, as ``python -m`` does),
    so that ``-m models.net:build`` and whole saved models import the user's modules without
    ``PYTHONPATH``. They stay there: the model may import more when it runs."""
    for folder in (*folders, Path.cwd()):  # the working folder ends up first
        entry = str(folder.resolve())
        if entry not in sys.path:
            sys.path.insert(0, entry)


def check_regular_file(path: Path, option: str, what: str) -> None:
    """Refuse anything but a regular file (a named pipe would block the read forever)."""
    if not path.exists():
        raise click.BadParameter(f"{path}: no such file. Check the path.", param_hint=option)
    if not path.is_file():
        kind = "a folder" if path.is_dir() else "not a regular file (a pipe or device)"
        raise click.BadParameter(f"{path}: {kind}. Pass {what}.", param_hint=option)


def _load_factory(spec: str) -> nn.Module:
    """Build a model from ``module:factory`` or ``path/to/file.py:factory``."""
    module_name, _, attribute = spec.rpartition(":")
    if not module_name or not attribute:
        raise click.BadParameter(
            f"{spec!r}: expected MODULE:FACTORY, e.g. mypackage.models:build.", param_hint="--model"
        )
    try:
        if module_name.endswith(".py"):
            path = Path(module_name)
            if not path.is_file():
                raise click.BadParameter(f"{spec!r}: no such file {path}. Check the path.",
                                         param_hint="--model")
            working_folder_importable(path.parent)
            module_spec = importlib.util.spec_from_file_location(path.stem, path)
            module = importlib.util.module_from_spec(module_spec)
            module_spec.loader.exec_module(module)
        else:
            working_folder_importable()
            module = importlib.import_module(module_name)
    except click.BadParameter:
        raise
    except Exception as error:  # the user's module failed to import: say so in one line
        raise click.BadParameter(
            f"{spec!r}: cannot import {module_name} ({type(error).__name__}: {error}). Fix the "
            f"module, or check that it is importable from the working folder {Path.cwd()}.",
            param_hint="--model",
        ) from error
    obj: Any = module
    for part in attribute.split("."):
        if not hasattr(obj, part):
            raise click.BadParameter(
                f"{spec!r}: {module_name} has no attribute {attribute!r}. Name a module or a "
                f"function that builds one, e.g. {module_name}:build.", param_hint="--model"
            )
        obj = getattr(obj, part)
    if not isinstance(obj, nn.Module):
        if not callable(obj):
            raise click.BadParameter(
                f"{spec!r}: {attribute} is neither a torch.nn.Module nor callable. Name a module "
                f"or a function that builds one.",
                param_hint="--model",
            )
        try:
            obj = obj()
        except Exception as error:
            raise click.ClickException(
                f"--model {spec}: calling {attribute}() failed ({type(error).__name__}: "
                f"{error}). Make {attribute}() callable without arguments."
            ) from error
    if not isinstance(obj, nn.Module):
        raise click.BadParameter(
            f"{spec!r}: {attribute}() returned {type(obj).__name__}, expected a torch.nn.Module. "
            f"Return the model from {attribute}().",
            param_hint="--model",
        )
    return obj


def _pickled(error: Exception) -> bool:
    """Whether ``torch.load(weights_only=True)`` failed on a pickled object (a whole model)."""
    return "Weights only load failed" in str(error)


def _read_state_dict(path: Path) -> dict[str, Tensor]:
    """Read a state_dict (or a checkpoint holding one under 'state_dict' or 'model')."""
    check_regular_file(path, "--weights", "a state_dict file saved with torch.save")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:
        if _pickled(error):
            raise click.BadParameter(
                f"{path}: holds a pickled object, not a state_dict; a whole model saved with "
                f"torch.save(model) is passed as --model {path} --allow-pickle ({PICKLE_RISK}). "
                f"Or save torch.save(model.state_dict(), FILE).", param_hint="--weights",
            ) from error
        raise click.BadParameter(
            f"{path}: not a PyTorch state_dict file ({first_line(error, 200)}). Save weights with "
            f"torch.save(model.state_dict(), FILE).",
            param_hint="--weights",
        ) from error
    if isinstance(state, dict):
        for key in ("state_dict", "model"):
            if isinstance(state.get(key), dict):
                state = state[key]
                break
    if not isinstance(state, dict) or not all(
        isinstance(k, str) and isinstance(v, Tensor) for k, v in state.items()
    ) or not state:
        raise click.BadParameter(
            f"{path}: expected a state_dict (a dict of parameter names to tensors), got "
            f"{type(state).__name__}. Save weights with torch.save(model.state_dict(), FILE).",
            param_hint="--weights",
        )
    if all(k.startswith("module.") for k in state):  # saved from DataParallel
        state = {k[len("module."):]: v for k, v in state.items()}
    return state


def _load_whole_model(path: Path, allow_pickle: bool) -> nn.Module:
    """A model saved whole with ``torch.save(model)``; unpickled only with ``allow_pickle``."""
    check_regular_file(path, "--model", "a model file saved with torch.save(model)")
    state_dict_hint = (f"Pass the architecture as --model (a torchvision name or "
                       f"MODULE:FACTORY) and the file as --weights {path}.")
    try:
        if not allow_pickle:
            obj = torch.load(path, map_location="cpu", weights_only=True)
        else:
            working_folder_importable(path.parent)
            obj = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as error:
        if _pickled(error):
            raise click.BadParameter(
                f"{path} holds a pickled model (torch.save(model)); if you trust the file, "
                f"pass --allow-pickle: {PICKLE_RISK}. Or save torch.save(model.state_dict(), "
                f"FILE) and pass --model MODULE:FACTORY --weights FILE.", param_hint="--model",
            ) from error
        raise click.BadParameter(
            f"{path}: cannot load the model ({type(error).__name__}: {first_line(error, 200)}). "
            f"Check that "
            f"the modules its classes come from are importable from the working folder "
            f"{Path.cwd()}.", param_hint="--model",
        ) from error
    if isinstance(obj, dict) and isinstance(obj.get("model"), nn.Module):
        obj = obj["model"]  # a checkpoint dict holding the model
    if isinstance(obj, dict):
        raise click.BadParameter(f"{path} holds a state_dict, not a model. {state_dict_hint}",
                                 param_hint="--model")
    if not isinstance(obj, nn.Module):
        raise click.BadParameter(
            f"{path}: expected a torch.nn.Module saved with torch.save(model), got "
            f"{type(obj).__name__}. Save the model itself.", param_hint="--model",
        )
    return obj


def _fit_weights(model: nn.Module, state: dict[str, Tensor], path: Path, name: str) -> None:
    """Load ``state`` into ``model``; one clear line when it does not fit."""
    own = model.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    mismatched = [
        f"{k}: file {tuple(state[k].shape)} vs model {tuple(own[k].shape)}"
        for k in own if k in state and state[k].shape != own[k].shape
    ]
    problems = []
    for label, items in (("missing", missing), ("unexpected", unexpected),
                         ("shape mismatches", mismatched)):
        if items:
            more = f", ... ({len(items)} in all)" if len(items) > 3 else ""
            problems.append(f"{label}: {', '.join(items[:3])}{more}")
    if problems:
        raise click.BadParameter(
            f"{path} does not fit the architecture {name} ({'; '.join(problems)}). Pass weights "
            f"saved from the same architecture.",
            param_hint="--weights",
        )
    model.load_state_dict(state)


def _torchvision_class_names(name: str, num_classes: int) -> tuple[str, ...] | None:
    import torchvision.models

    try:
        weights = torchvision.models.get_model_weights(name)
    except ValueError:
        return None
    for member in weights:  # the metadata ships with torchvision; nothing is downloaded
        categories = member.meta.get("categories")
        if categories is not None and len(categories) == num_classes:
            return tuple(categories)
    return None


def _read_class_names(path: Path) -> tuple[str, ...]:
    check_regular_file(path, "--class-names", "a text file with one class name per line")
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as error:
        raise click.BadParameter(
            f"{path}: cannot read ({error}). Pass a UTF-8 text file.", param_hint="--class-names"
        ) from error
    names = tuple(line.strip() for line in lines if line.strip())
    if not names:
        raise click.BadParameter(
            f"{path}: expected one class name per line, got none. Write one name per line.",
            param_hint="--class-names",
        )
    return names


def resolve_device(device: str) -> torch.device:
    """``auto`` (CUDA if available, else CPU), or a torch device string that exists here."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        resolved = torch.device(device)
    except (RuntimeError, ValueError) as error:
        raise click.BadParameter(
            f"{device!r} is not a device; expected auto, cpu, cuda, cuda:N or mps. Pass e.g. "
            f"--device cpu.",
            param_hint="--device",
        ) from error
    if resolved.type == "cuda" and (
        not torch.cuda.is_available()
        or (resolved.index is not None and resolved.index >= torch.cuda.device_count())
    ):
        raise click.BadParameter(
            f"{device!r}: no such CUDA device here ({torch.cuda.device_count()} available). "
            f"Use --device cpu.",
            param_hint="--device",
        )
    if resolved.type == "mps" and not torch.backends.mps.is_available():
        raise click.BadParameter(f"{device!r}: MPS is not available here. Use --device cpu.",
                                 param_hint="--device")
    return resolved


def load_model(
    name: str = "demo",
    weights: str | None = None,
    *,
    device: str | torch.device = "cpu",
    input_size: int | None = None,
    normalization: str = "auto",
    class_names: Path | None = None,
    allow_pickle: bool = False,
) -> LoadedModel:
    """Load the classifier named by ``--model``: ``demo`` (``demo-vit``), a torchvision name,
    ``MODULE:FACTORY`` or a file holding a whole model.

    Parameters
    ----------
    name : str
        ``demo`` (the built-in model and its shipped weights), a torchvision classification
        architecture (e.g. ``resnet18``; needs ``weights``), or ``MODULE:FACTORY`` /
        ``FILE.py:FACTORY`` naming a module or a callable returning one (imported from the
        working folder), or a file ``*.pt``/``*.pth``/``*.pkl``/``*.ckpt`` holding a model
        saved with ``torch.save(model)`` (needs ``allow_pickle``).
    weights : str or None
        A state_dict file, ``random`` for untrained weights, or None (demo and factories: as
        built; torchvision: an error, nothing is ever downloaded).
    device : str or torch.device
        Where to run.
    input_size : int or None
        Side of the square input; default 64 for the demo, 224 otherwise.
    normalization : {'auto', 'imagenet', 'none'}
        Per-channel normalisation in front of the model; ``auto`` is ImageNet's for torchvision
        architectures and none otherwise.
    class_names : pathlib.Path or None
        Text file with one class name per line.
    allow_pickle : bool
        Unpickle a whole saved model: this runs code stored in the file, so it is an explicit
        choice (``--allow-pickle``).

    Returns
    -------
    LoadedModel
    """
    device = device if isinstance(device, torch.device) else resolve_device(device)
    names: tuple[str, ...] | None = None
    weight_path = None if weights in (None, "random") else Path(weights)
    described = "random" if weights == "random" else str(weights) if weights else "as built"
    torchvision_model = False
    if name in DEMO_MODELS:  # the CNN and the ViT on the demo shapes
        from funcattr.demo import CLASSES, IMAGE_SIZE, DemoNet, load_demo_model
        from funcattr.demo.vit import build_demo_vit, load_demo_vit

        names = tuple(CLASSES)
        default_size, default_norm = IMAGE_SIZE, "none"
        load, build = ((load_demo_model, DemoNet) if name == "demo"
                       else (load_demo_vit, build_demo_vit))
        if weights is None:
            model, described = load(dtype=torch.float32), f"shipped {name} weights"
        else:
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(0)
                model = build(dtype=torch.float32)
    elif ":" in name:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)
            model = _load_factory(name)
        default_size, default_norm = 224, "none"
    elif Path(name).suffix.lower() in MODEL_FILE_SUFFIXES:
        model = _load_whole_model(Path(name), allow_pickle)
        default_size, default_norm = 224, "none"
    else:
        available = torchvision_names()
        if name not in available:
            close = difflib.get_close_matches(name, available + ["demo"], n=3)
            hint = f" Did you mean {', '.join(close)}?" if close else ""
            raise click.BadParameter(
                f"{name!r} is not a model: expected demo, a torchvision classification "
                f"architecture (see `funcattr list models`), MODULE:FACTORY or a model file "
                f"({', '.join('*' + s for s in MODEL_FILE_SUFFIXES)}).{hint}",
                param_hint="--model",
            )
        if weights is None:
            raise click.BadParameter(
                f"{name} needs --weights FILE (a state_dict saved with torch.save("
                f"model.state_dict(), FILE)); funcattr never downloads weights. Pass --weights "
                f"random for an untrained network.",
                param_hint="--weights",
            )
        import torchvision.models

        state = _read_state_dict(weight_path) if weight_path is not None else None
        kwargs = {}
        if state is not None:  # a fine-tuned model: the last layer gives the number of classes
            classes = next(reversed(state.values())).shape[:1]
            if len(classes) == 1 and classes[0] != 1000:
                kwargs["num_classes"] = int(classes[0])
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)
            try:
                model = torchvision.models.get_model(name, weights=None, **kwargs)
            except (TypeError, ValueError):  # an architecture without num_classes
                model = torchvision.models.get_model(name, weights=None)
        torchvision_model = True
        default_size, default_norm = 224, "imagenet"
    model = model.to(dtype=torch.float32)
    if weight_path is not None:
        state = state if torchvision_model else _read_state_dict(weight_path)
        _fit_weights(model, state, weight_path, name)
    model.eval()
    for param in model.parameters():
        param.requires_grad_(False)

    size = input_size or default_size
    norm = default_norm if normalization == "auto" else normalization
    low: float | Tensor = 0.0
    high: float | Tensor = 1.0
    stats = None
    if norm == "imagenet":
        stats = (IMAGENET_MEAN, IMAGENET_STD)
        normalizer = InputNormalization(*stats)
        low = ((0.0 - normalizer.mean) / normalizer.std).to(device)
        high = ((1.0 - normalizer.mean) / normalizer.std).to(device)
        model = nn.Sequential(normalizer, model).eval()
    model = model.to(device)

    probe = torch.zeros(1, 3, size, size, dtype=torch.float32, device=device)
    try:
        with torch.no_grad():
            output = model(probe)
    except Exception as error:
        raise click.ClickException(
            f"--model {name}: the model cannot process a 3x{size}x{size} image "
            f"({type(error).__name__}: {first_line(error, 200)}). Set --input-size to what it "
            f"expects."
        ) from error
    if not isinstance(output, Tensor) or output.ndim != 2:
        got = tuple(output.shape) if isinstance(output, Tensor) else type(output).__name__
        raise click.ClickException(
            f"--model {name}: expected a classifier returning (batch, classes) scores, got "
            f"{got}. Wrap the model so that it returns class scores."
        )
    num_classes = output.shape[1]
    if class_names is not None:
        names = _read_class_names(class_names)
        if len(names) != num_classes:
            raise click.BadParameter(
                f"{class_names} has {len(names)} names, but the model has {num_classes} outputs. "
                f"Give one name per output.",
                param_hint="--class-names",
            )
    elif torchvision_model:
        names = _torchvision_class_names(name, num_classes)
    resize = round(size / 0.875) if torchvision_model else size
    return LoadedModel(
        name=name, model=model, input_size=size, resize=resize, num_classes=num_classes,
        class_names=names, low=low, high=high, normalization=stats,
        weights=described, device=device,
    )
