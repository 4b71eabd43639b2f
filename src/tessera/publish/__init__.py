"""Publish events to Tessera from any Python service.

.. code-block:: python

    from tessera.publish import Publisher

    with Publisher("http://127.0.0.1:8000", "wk_membership_123", "membership-service") as pub:
        pub.publish_entity_change("com.example.membership.member.address_changed",
                                  "member", "M-1001", "update", version=7,
                                  before={"city": "Oslo"}, after={"city": "Bergen"})
        pub.publish_process_step("com.example.roadservice.ticket.status_changed",
                                 "roadside_assistance", "driver_assigned", "T-77")

See ``docs/events.md``.
"""

from tessera.publish.client import AsyncPublisher, Publisher, PublishError
from tessera.publish.envelope import (
    changed_fields,
    entity_change_data,
    entity_change_event,
    process_step_event,
    stable_id,
)

__all__ = [
    "AsyncPublisher",
    "PublishError",
    "Publisher",
    "changed_fields",
    "entity_change_data",
    "entity_change_event",
    "process_step_event",
    "stable_id",
]
