"""edit-batch: a manifest of edits -> shards -> edited PNGs, results/failures Parquet, artifacts.

One entrypoint, two roles (two deployments in prefect.yaml, parameter variants of this flow):
- coordinator (`shard_index` unset): takes the out_root's lease (lcd.jobs.lease: one coordinator
  per out_root, a second waits `coordinator_wait_s` then refuses naming the first), reads the manifest once into a shard plan (lcd.jobs.plan),
  checks which shards have work left (tasks.edit.shards_to_run: a finished shard whose inputs,
  outputs and config are unchanged gets no run, so a resume starts no process), fans those out, waits, merges the shard tables, publishes the artifacts, and fails if any
  item is unaccounted for;
- shard (`shard_index` set): edits one shard, read from its own plan file, on whichever `gpu`
  worker picked it up.

Fan-out is `run_deployment` of the shard deployment (see README "Orchestration and scaling
out"): every shard is its own flow run in the `gpu` pool, so N workers on N machines share the
work, each shard loads the model once, and a shard whose machine died is re-run on its own.
`fan_out="inline"` runs the shards one after another in this process (one GPU, no worker).
"""

from __future__ import annotations

import contextvars
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from typing import Literal

from prefect import flow, get_run_logger
from prefect.client.orchestration import get_client
from prefect.deployments import run_deployment
from prefect.runtime import flow_run as flow_run_ctx
from prefect.states import Completed, Failed

from flows.automations import ensure_zombie_automation
from lcd.config import EditConfig
from lcd.errors import CoordinatorBusy
from lcd.io import storage
from lcd.jobs.editing import Engine
from lcd.jobs.lease import CoordinatorLease
from tasks.edit import edit_shard, merge_shard_tables, plan_manifest, publish_artifacts, shards_to_run


class _Shards:
    """The coordinator's shard runs: create them, wait for all to end, and start a shard again
    when its run crashed (its worker or machine died: the worker reports Crashed, or the zombie
    automation does when heartbeats stop), up to `attempts` runs per shard. Each poll reads only
    the runs still pending, `page` per request with an id filter (1,000 shards: 5 requests, not
    1,000); the interval backs off from `poll_s` to `max_poll_s`, kept short because the job ends
    only when this loop sees its last shard end (a 10 s cap cost up to 10 s per job, 13% of a
    64 s shard round; at 2 s, 1,000 shards are 2.5 requests a second)."""

    def __init__(self, deployment: str, common: dict, num_shards: int, key: str, heartbeat_s: int,
                 attempts: int):
        self.deployment, self.common, self.n, self.key = deployment, common, num_shards, key
        self.heartbeat_s, self.attempts = heartbeat_s, attempts
        self.tries = [0] * num_shards
        self.run_of: list = [None] * num_shards  # shard -> its current flow-run id

    def submit(self, i: int) -> None:
        from flows.automations import SHARD_TAG

        self.tries[i] += 1
        try_ = self.tries[i]
        # not subflows (a thousand child links weigh on the coordinator's run); the idempotency key
        # makes a retried coordinator run find its shard runs instead of creating them twice
        run = run_deployment(self.deployment, parameters={**self.common, "shard_index": i}, timeout=0,
                             as_subflow=False, idempotency_key=f"{self.key}-shard-{i}-of-{self.n}-try-{try_}",
                             flow_run_name=f"shard-{i:05d}-of-{self.n:05d}" + (f"-try-{try_}" if try_ > 1 else ""),
                             tags=[SHARD_TAG],
                             job_variables={"env": {"PREFECT_FLOWS_HEARTBEAT_FREQUENCY": str(self.heartbeat_s)}})
        self.run_of[i] = run.id

    def run_all(self, shards: list[int], poll_s: float = 0.5, page: int = 200, max_poll_s: float = 2.0) -> dict[int, str]:
        """Run these shards -> {shard: final state name (of its last run)}."""
        from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

        log = get_run_logger()
        # one request each, ~0.13 s: 16 at a time, so 1,000 shards exist in seconds, not minutes;
        # each thread runs in a copy of this context (the flow run's settings and logger)
        t0 = time.perf_counter()
        with ThreadPoolExecutor(min(16, max(1, len(shards))), thread_name_prefix="lcd-submit") as pool:
            list(pool.map(lambda i: contextvars.copy_context().run(self.submit, i), shards))
        log.info(f"{len(shards)} shard runs created in {time.perf_counter() - t0:.1f} s")
        final: dict[int, str] = {}
        with get_client(sync_client=True) as client:
            while len(final) < len(shards):
                shard_of = {self.run_of[i]: i for i in shards if i not in final}
                ids = list(shard_of)
                for k in range(0, len(ids), page):
                    chunk = ids[k : k + page]
                    for r in client.read_flow_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=chunk)),
                                                   limit=len(chunk)):
                        if r.state is None or not r.state.is_final():
                            continue
                        i = shard_of[r.id]
                        if r.state.name == "Crashed" and self.tries[i] < self.attempts:
                            log.warning(f"shard {i} run {r.name} crashed ({r.state.message}); starting it again "
                                        f"(try {self.tries[i] + 1} of {self.attempts})")
                            self.submit(i)
                            poll_s = 0.5
                        else:
                            final[i] = r.state.name
                if len(final) < len(shards):
                    time.sleep(poll_s)
                    poll_s = min(poll_s * 1.5, max_poll_s)
        return final


@flow(name="edit-batch", log_prints=True)
def edit_batch(
    manifest: str,
    out_root: str,
    params_path: str = "params.yaml",
    num_shards: int = 2,
    shard_index: int | None = None,
    fan_out: Literal["deployment", "inline"] = "deployment",
    shard_deployment: str = "edit-batch/shard",
    engine: Engine = "diffusion",
    concepts_root: str | None = "outputs/concepts",
    masks_store: str | None = "outputs/masks",  # the masks stage's store, for `sam:<selection>` regions
    edit: EditConfig | None = None,
    contact_sheet_rows: int = 8,
    shard_attempts: int = 3,
    shard_heartbeat_s: int = 60,
    shard_silent_after_s: int = 300,
    standin_batch_s: float = 0.0,
    replan: bool = False,
    skip_current_shards: bool = True,
    coordinator_wait_s: float = 0.0,
) -> dict:
    """Edit every manifest item into `<out_root>/edits/<id>.png`; -> counts {edited, skipped, failed}.

    Fan-out settings: `shard_attempts` runs at most per shard (a Crashed run is started again),
    `shard_heartbeat_s` between a shard run's heartbeats (>= 30), `shard_silent_after_s` of
    silence before the zombie automation marks a shard run Crashed. `standin_batch_s`: the noop
    engine sleeps that long per batch (a stand-in GPU for bench/scale.py). `replan`: plan this
    manifest even though `out_root` holds the job of another manifest file (refused otherwise:
    the two jobs would replace each other's tables). `skip_current_shards`: start no run for a
    shard that finished last time with nothing it depends on changed (checked here from its
    ledger, its known hashes and one listing of edits/; its state reads "Current").
    `coordinator_wait_s`: one coordinator per out_root (lcd.jobs.lease): a second one waits this
    long for the running one's lease, then fails with one line naming that run."""
    if shard_index is not None:  # shard role
        return edit_shard(manifest, out_root, shard_index, num_shards, params_path, edit, engine, concepts_root,
                          masks_store, standin_batch_s)
    run = f"{flow_run_ctx.name or 'edit-batch'} ({flow_run_ctx.id or 'no flow run id'})"
    lease = CoordinatorLease(out_root, run, wait_s=coordinator_wait_s)
    try:
        lease.acquire()
    except CoordinatorBusy as e:  # one line in the run's state and logs, not a traceback; callers get `e`
        get_run_logger().error(str(e))
        return Failed(message=str(e), data=e)
    with lease:
        if lease.took_over:
            get_run_logger().warning(f"took over the stale coordinator lease of {lease.took_over.get('run')!r}")
        return _coordinate(manifest, out_root, params_path, num_shards, fan_out, shard_deployment, engine,
                           concepts_root, masks_store, edit, contact_sheet_rows, shard_attempts, shard_heartbeat_s,
                           shard_silent_after_s, standin_batch_s, replan, skip_current_shards)


def _coordinate(manifest: str, out_root: str, params_path: str, num_shards: int, fan_out: str,
                shard_deployment: str, engine: Engine, concepts_root: str | None, masks_store: str | None,
                edit: EditConfig | None, contact_sheet_rows: int, shard_attempts: int, shard_heartbeat_s: int,
                shard_silent_after_s: int, standin_batch_s: float, replan: bool, skip_current_shards: bool):
    """The coordinator's steps, run while it holds the out_root's lease."""
    log = get_run_logger()
    # 1. read the manifest once into one plan file per shard; its bad entries are failures of this run
    plan = plan_manifest(manifest, out_root, num_shards, replan)
    log.info(f"plan of {manifest}: {plan['items']} items, {plan['failures']} bad entries, {num_shards} shards"
             f"{' (manifest unchanged: plan reused)' if plan['reused'] else ''}")
    # 2. the shards with work left (a resume of a finished job: none), then fan those out
    todo = (shards_to_run(out_root, num_shards, params_path, edit, engine, concepts_root, masks_store)
            if skip_current_shards else list(range(num_shards)))
    if len(todo) < num_shards:
        log.info(f"{num_shards - len(todo)} of {num_shards} shards current (nothing to do): no run started for them")
    states = ["Current"] * num_shards
    if fan_out == "inline":
        for i in todo:
            edit_shard(manifest, out_root, i, num_shards, params_path, edit, engine, concepts_root, masks_store,
                       standin_batch_s)
            states[i] = "Completed"
    elif todo:
        common = dict(manifest=manifest, out_root=out_root, params_path=params_path, num_shards=num_shards,
                      engine=engine, concepts_root=concepts_root, masks_store=masks_store, edit=edit.model_dump() if edit else None,
                      standin_batch_s=standin_batch_s)
        ensure_zombie_automation(shard_silent_after_s)  # silent shard runs -> Crashed -> started again
        shards = _Shards(shard_deployment, common, num_shards, str(flow_run_ctx.id or uuid.uuid4()),
                         shard_heartbeat_s, shard_attempts)
        for i, st in shards.run_all(todo).items():
            states[i] = st
    # 3. merge the tables of this sharding; 4. artifacts
    counts = merge_shard_tables(out_root, num_shards)
    publish_artifacts(manifest, out_root, counts, states, contact_sheet_rows, masks_store)
    missing, n_missing, duplicated = counts.pop("missing"), counts.pop("n_missing"), counts.pop("duplicated")
    counts.pop("per_shard")
    line = (f"{counts['edited']} edited, {counts['skipped']} current (skipped), {counts['failed']} failed "
            f"of {counts['edited'] + counts['skipped'] + counts['failed']} -> {out_root}")
    log.info(f"summary: {line}" + (f"; failures in {storage.join(out_root, 'failures.parquet')}" if counts["failed"] else ""))
    if n_missing or duplicated or any(s not in ("Completed", "Current") for s in states):
        raise RuntimeError(f"edit-batch incomplete: shard states {states}, {n_missing} items unaccounted "
                           f"for (e.g. {missing[:3]}), {duplicated} duplicated; re-run to resume")
    if counts["failed"]:  # `--watch` and the UI say so, not a bare "Completed"; callers still get the counts
        total = counts["edited"] + counts["skipped"] + counts["failed"]
        return Completed(name=f"Completed with {counts['failed']} of {total} failed", message=line, data=counts)
    return counts


if __name__ == "__main__":
    import sys

    from flows.server import temporary_server

    with temporary_server():  # as `python -m flows`: a temporary server ends with this process
        print(edit_batch(sys.argv[1], sys.argv[2], fan_out="inline", num_shards=1))
