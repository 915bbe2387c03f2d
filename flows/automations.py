"""The automation that turns silent shard runs into Crashed ones, so the coordinator re-runs them.

A shard run whose process dies with its worker (a machine gone, a container evicted) stays
`Running` forever: nothing is left to report its end. Prefect's documented remedy for a
self-hosted server ("Detect and respond to zombie flows", docs.prefect.io/v3/advanced/
detect-zombie-flows) is a proactive automation on flow-run heartbeats: a run that has sent a
heartbeat and then neither another heartbeat nor a final state within `after_s` seconds is set
`Crashed`. This one matches only runs tagged `SHARD_TAG` (the coordinator tags its shard runs),
so it never touches a user's other flows; the coordinator sees the Crashed state and starts the
shard again (edit_batch._Shards), and the new run skips what the dead one finished.

Heartbeats come from the flow-run process every PREFECT_FLOWS_HEARTBEAT_FREQUENCY seconds
(at least 30; the coordinator sets it per shard run through the job variables), so `after_s`
must exceed it with room for a busy machine: the default is five missed beats.
"""

from __future__ import annotations

from datetime import timedelta

SHARD_TAG = "lcd-shard"
FINAL_EVENTS = ("Completed", "Failed", "Cancelled", "Crashed")


def zombie_automation_name(after_s: int) -> str:
    return f"lcd: crash shard runs silent for {after_s}s"


def ensure_zombie_automation(after_s: int) -> str:
    """Create the automation for `after_s` unless one of that name exists; -> its name.
    Idempotent, so every coordinator run can call it (two coordinators racing may create two
    identical automations, which act the same)."""
    from prefect.automations import Automation
    from prefect.client.schemas.objects import StateType
    from prefect.events.actions import ChangeFlowRunState
    from prefect.events.schemas.automations import EventTrigger, Posture
    from prefect.events.schemas.events import ResourceSpecification

    name = zombie_automation_name(after_s)
    try:
        Automation.read(name=name)
        return name
    except ValueError:  # not found
        pass
    Automation(
        name=name,
        description="Marks an LCDiffusion shard run Crashed when its heartbeats stop (machine or worker gone).",
        trigger=EventTrigger(
            after={"prefect.flow-run.heartbeat"},
            expect={"prefect.flow-run.heartbeat", *(f"prefect.flow-run.{s}" for s in FINAL_EVENTS)},
            match=ResourceSpecification({"prefect.resource.id": ["prefect.flow-run.*"]}),
            match_related=ResourceSpecification({"prefect.resource.role": "tag",
                                                 "prefect.resource.id": f"prefect.tag.{SHARD_TAG}"}),
            for_each={"prefect.resource.id"},
            posture=Posture.Proactive,
            threshold=1,
            within=timedelta(seconds=after_s),
        ),
        actions=[ChangeFlowRunState(state=StateType.CRASHED,
                                    message=f"no heartbeat for {after_s} s: the shard's worker or machine is gone")],
    ).create()
    return name
