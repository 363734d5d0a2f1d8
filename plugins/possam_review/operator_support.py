"""What the review plugin's operators share: the label field they act on, progress reporting, and
the configuration of the operators that always run delegated."""

from __future__ import annotations

from typing import Callable, Union

import fiftyone.operators as foo

from possam_label.fiftyone.dataset import DEFAULT_LABEL_FIELD, possam_label_fields


def possam_fields(ctx) -> list[str]:
    """The dataset's PosSAM label fields (none without a dataset)."""
    return possam_label_fields(ctx.dataset) if ctx.dataset is not None else []


def default_label_field(ctx) -> str:
    """``possam`` when the dataset has it (or no PosSAM field yet), else its first PosSAM field."""
    fields = possam_fields(ctx)
    if DEFAULT_LABEL_FIELD in fields or not fields:
        return DEFAULT_LABEL_FIELD
    return fields[0]


def chosen_label_field(ctx) -> str:
    """The ``label_field`` parameter, else :func:`default_label_field`."""
    return ctx.params.get("label_field") or default_label_field(ctx)


def progress_reporter(ctx) -> Union[Callable[[float, str], None], bool]:
    """Loader/exporter/job progress callback: reports to the delegated-operation record when
    delegated; False (no progress bar) when run in the App's process."""
    if not ctx.delegated:
        return False

    def report(fraction: float, message: str) -> None:
        ctx.set_progress(progress=fraction, label=message)

    return report


def delegated_operator_config(name: str, label: str, description: str) -> foo.OperatorConfig:
    """The config of an operator that takes minutes to hours (inference, training): dynamic inputs,
    delegated execution only (an OSS worker runs it: ``fiftyone delegated launch``)."""
    return foo.OperatorConfig(
        name=name,
        label=label,
        description=description,
        dynamic=True,
        allow_immediate_execution=False,
        allow_delegated_execution=True,
        default_choice_to_delegated=True,
    )


class DelegatedOperator(foo.Operator):
    """Base of the operators configured by :func:`delegated_operator_config`: never block the App."""

    def resolve_delegation(self, ctx):
        return True
