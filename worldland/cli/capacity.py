"""The capacity ledger: ``allocate``, ``release``, ``mining``, ``gpu-model``."""

from __future__ import annotations

import click

from worldland.cli.common import (
    Context,
    echo,
    fail,
    handles_errors,
    print_json,
)
from worldland.domain.names import UnknownGpuModel, canonical_gpu_model


@click.command()
@click.option("--job", "job_id", required=True, help="Job id (idempotency key).")
@click.option("--provider", "provider_id", required=True, help="Provider id.")
@click.option("--model", required=True, help="GPU model (any spelling; canonicalised).")
@click.option("--gpus", type=click.IntRange(min=0), required=True)
@click.option("--cpu", "cpu_cores", type=click.IntRange(min=0), default=0, show_default=True)
@click.option("--memory-mb", type=click.IntRange(min=0), default=0, show_default=True)
@click.option("--json", "as_json", is_flag=True)
@click.pass_obj
@handles_errors
def allocate(
    obj: Context,
    job_id: str,
    provider_id: str,
    model: str,
    gpus: int,
    cpu_cores: int,
    memory_mb: int,
    as_json: bool,
) -> None:
    """Allocate a job's GPUs, CPU and memory on a provider: all or nothing."""
    allocation = obj.fleet.ledger.allocate(job_id, provider_id, model, gpus, cpu_cores, memory_mb)
    if as_json:
        print_json(allocation.to_dict())
    else:
        echo(
            f"{job_id}: {allocation.gpus} x {allocation.model} ({allocation.from_mining} from mining), "
            f"{allocation.cpu_cores} cores, {allocation.memory_mb} MiB on {provider_id}"
        )


@click.command()
@click.argument("job_id")
@click.option("--json", "as_json", is_flag=True)
@click.pass_obj
@handles_errors
def release(obj: Context, job_id: str, as_json: bool) -> None:
    """Release what a job holds (idempotent)."""
    allocation = obj.fleet.ledger.release(job_id)
    if as_json:
        print_json(allocation.to_dict() if allocation else None)
    elif allocation is None:
        echo(f"{job_id}: nothing held (already released or never allocated)")
    else:
        echo(
            f"{job_id}: released {allocation.gpus} x {allocation.model}, {allocation.cpu_cores} cores, "
            f"{allocation.memory_mb} MiB on {allocation.provider_id}"
        )


@click.command()
@click.option("--provider", "provider_id", required=True)
@click.option("--model", required=True, help="GPU model (any spelling; canonicalised).")
@click.option("--count", type=click.IntRange(min=0), required=True, help="GPUs of that model that mine.")
@click.option("--json", "as_json", is_flag=True)
@click.pass_obj
@handles_errors
def mining(obj: Context, provider_id: str, model: str, count: int, as_json: bool) -> None:
    """Set how many idle GPUs of a model mine (rentals take them back when needed)."""
    obj.fleet.store.require(provider_id)  # one line naming an unknown provider
    canonical = canonical_gpu_model(model)
    offered = obj.fleet.ledger.get(provider_id).to_dict()["gpus"]
    if model.strip() and canonical not in offered:  # (an empty name: the ledger says what is wrong)
        models = ", ".join(sorted(offered)) or "none"
        fail(f"provider {provider_id!r} has no {canonical} GPUs (its models: {models})")
    capacity = obj.fleet.ledger.set_mining(provider_id, model, count)
    if as_json:
        print_json(capacity.to_dict())
    else:
        counts = capacity.to_dict()["gpus"].get(canonical, {})
        echo(f"{provider_id} {canonical}: " + ", ".join(f"{k} {v}" for k, v in counts.items()))


@click.command("gpu-model")
@click.argument("names", nargs=-1, required=True)
@click.option("--json", "as_json", is_flag=True, help="Print a JSON object raw name -> canonical.")
def gpu_model(names: tuple[str, ...], as_json: bool) -> None:
    """Print the canonical model name for each raw GPU name, one per line."""
    try:
        canonical = {name: canonical_gpu_model(name) for name in names}
    except UnknownGpuModel as exc:
        fail(str(exc))
    if as_json:
        print_json(canonical)
    else:
        for name in names:
            echo(canonical[name])
