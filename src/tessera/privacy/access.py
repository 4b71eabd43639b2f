"""Access requests: everything Tessera holds about one resolved person, as JSON.

The export is built from the same sources erasure clears: the profile (every
linked identifier with the event and source that linked it, every trait with
its source and time, the profiles merged in), the whole timeline with each
event as received, consent decisions, journey state, and what personalization
computed from them (computed traits, audience memberships with the time each
was entered, the offer history and where each offered action stands against
its caps). The bus holds the same events as the timeline; the warehouse holds
copies of the profile.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

from tessera.events.envelope import iso_time
from tessera.privacy.consent import PREFIX
from tessera.store.base import Identifier

if TYPE_CHECKING:
    from tessera.runtime import Runtime

PAGE = 1000


def export_person(runtime: Runtime, identifier: Identifier) -> dict[str, Any] | None:
    """The export, or None when no profile has this identifier. Blocking: run in a thread."""
    from tessera.journeys.state import existing_journey_state

    store = runtime.store
    pid = store.resolve(f"{identifier[0]}:{identifier[1]}")
    profile = store.get_profile(pid) if pid else None
    if profile is None:
        return None
    timeline: list[dict[str, Any]] = []
    before: tuple[float, str] | None = None
    while True:
        page = store.timeline(profile.id, PAGE, before)
        timeline += [{"event_uid": e.event_uid, "type": e.type, "source": e.source,
                      "time": iso_time(e.time), "received_at": iso_time(e.received_at),
                      "event": e.event} for e in page]
        if len(page) < PAGE:
            break
        before = (page[-1].time, page[-1].event_uid)
    journeys: list[dict[str, Any]] = []
    state = existing_journey_state(runtime.store_url, runtime.data_dir)
    if state is not None:
        try:
            for pid_ in [profile.id, *(m.merged for m in profile.merged_from)]:
                journeys += [{"journey": i.journey, "status": i.status, "step": i.step,
                              "entered_at": iso_time(i.entered_at),
                              "updated_at": iso_time(i.updated_at), "context": i.context}
                             for i in state.instances(pid_)]
        finally:
            state.close()
    personalization = _personalization(runtime, [profile.id,
                                                 *(m.merged for m in profile.merged_from)])
    traits = {name: {"value": t.value, "source": t.source, "time": iso_time(t.time)}
              for name, t in profile.traits.items()}
    return {
        "profile_id": profile.id,
        "exported_at": iso_time(time.time()),
        "created_at": iso_time(profile.created_at),
        "updated_at": iso_time(profile.updated_at),
        "event_count": profile.event_count,
        "identifiers": [{"type": i.type, "value": i.value, "source": i.source,
                         "linked_at": iso_time(i.linked_at), "event_uid": i.event_uid,
                         "reason": i.reason} for i in profile.identities],
        "traits": traits,
        "consent": {n[len(PREFIX):]: t for n, t in traits.items() if n.startswith(PREFIX)},
        "merged_profiles": [{"profile_id": m.merged, "merged_at": iso_time(m.at),
                             "event_uid": m.event_uid, "reason": m.reason}
                            for m in profile.merged_from],
        "timeline": timeline,
        "journeys": journeys,
        "personalization": personalization,
    }


def _personalization(runtime: Runtime, pids: list[str]) -> dict[str, Any]:
    """The personalization state's part: computed traits, segments, offers, caps."""
    from tessera.personalization.queries import Personalization
    from tessera.personalization.state import existing_state

    state = existing_state(runtime.store_url, runtime.data_dir)
    if state is None:
        return {"computed_traits": {}, "segments": [], "offers": [], "caps": []}
    try:
        return Personalization(runtime.config.personalization, runtime.store,
                               state).person(pids)
    finally:
        state.close()
