"""Replaying a scenario's results (scenario_replay.py calls these): an action's participants' feedback, its
partner's assessment and its deliverables (sent before the action is closed: nothing changes after closure),
and an expert's evaluation of a deployment (right after the deployment, on the expert's stream). Also the ids
of the entries of the scenario a file follows (`follows:`), derived from their command ids as the services
derive them, so a history file can deploy the 2017 roster without replaying it again.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from services.experts.commands import DeployExpert, RegisterExpert
from services.ops.scenario import ActionEntry, DeploymentEntry, Scenario, load


def followed_ids(sc: Scenario, path: Path) -> dict[str, str]:
    """Entry key -> stream id of the experts of the scenario `sc` follows (none if it follows none)."""
    if not sc.follows:
        return {}
    base = load(path.parent / sc.follows)
    return {
        e.key: RegisterExpert.model_construct(command_id=base.cid("expert", e.key, "register")).expert_id
        for e in base.experts
    }


async def of_action(r: Any, a: ActionEntry) -> None:
    """The feedback of its activities, the partner's assessment and the deliverables of an action, in order."""
    for x in sorted(a.activities, key=lambda x: x.n):
        if x.feedback is not None:
            f = x.feedback
            await r.send(
                lambda f=f, x=x: r.ac.record_feedback(
                    command_id=r.sc.cid("action", a.code, f"A{x.n}:feedback"),
                    activity_id=f"{a.code}/A{x.n}",
                    respondents=f.respondents,
                    skills_enhanced=f.skills_enhanced,
                    makes_a_difference=f.makes_a_difference,
                    recorded_on=f.recorded_on.isoformat(),
                )
            )
    if a.assessment is not None:
        s = a.assessment
        await r.send(
            lambda: r.ac.assess(
                command_id=r.sc.cid("action", a.code, "assessment"),
                action_code=a.code,
                rating=s.rating,
                submitted_on=s.submitted_on.isoformat(),
            )
        )
    for n, d in enumerate(a.deliverables, start=1):  # one at a time: the n-th is <code>/D<n>
        await r.send(
            lambda d=d, n=n: r.ac.record_deliverable(
                command_id=r.sc.cid("action", a.code, f"D{n}"),
                action_code=a.code,
                kind=d.kind,
                title=d.title,
                delivered_on=d.delivered_on.isoformat(),
            )
        )


async def evaluation(r: Any, d: DeploymentEntry, expert_id: str) -> None:
    """The expert's evaluation of the deployment (its id derived from the deployment's command id)."""
    if d.evaluation is None or d.cancelled is not None:
        return
    ev = d.evaluation
    deployment_id = DeployExpert.model_construct(command_id=r.sc.cid("deployment", d.key)).deployment_id
    await r.send(
        lambda: r.ex.submit_evaluation(
            command_id=r.sc.cid("deployment", d.key, "evaluation"),
            expert_id=expert_id,
            deployment_id=deployment_id,
            answers=dict(ev.answers),
            submitted_on=ev.submitted_on.isoformat(),
        )
    )
