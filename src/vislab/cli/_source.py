"""The model a command works on, from `--run DIR | --model NAME` (export, explain): one way to open it.

Its imports load torch: a command imports this module when it runs, never while the parser is built
(the arguments themselves are `_common.add_model_source`)."""

from __future__ import annotations

from pathlib import Path

from vislab.cli._common import CliError
from vislab.models import factory
from vislab.training import evaluation, runs
from vislab.views.explain import Loaded


def open_model(args) -> tuple[Loaded, factory.ModelInfo | None]:
    """The model of a run folder (its classes and data config), or a library model with its original head
    (pretrained when here, per --weights) and the info that says where its weights came from (None for a run)."""
    if args.run is not None:
        folder = Path(args.run)
        if not folder.is_dir():
            raise CliError(f"--run {args.run} is not a folder (give a run folder written by `vislab train`)")
        try:
            net, run = runs.load(folder)
        except (FileNotFoundError, KeyError, ValueError, RuntimeError, OSError) as exc:
            raise CliError(f"--run {args.run} is not a run folder ({str(exc).splitlines()[0][:200]})") from None
        return Loaded(net, run.data_config, list(run.classes), run.config.get("model", "")), None
    try:
        net, info = factory.create_model(args.model, num_classes=None, weights_choice=args.weights)
    except (ValueError, KeyError) as exc:  # an unknown name: the library's own words, one line
        raise CliError(str(exc).splitlines()[0]) from None
    return Loaded(net, info.data_config, evaluation.class_names(info.name, info.num_classes), info.name), info
