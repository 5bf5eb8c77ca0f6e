"""Noise control decisions: group keys, deduplication, silences and throttling.

Pure functions over plain values (notices.py reads the rows and applies the answers):

- Group key: the rule's `group_key` template (default "{{ rule_id }}:{{ script_name }}")
  rendered against the occurrence's context (cut to 255 characters). One open (not resolved) alert exists per
  (rule, group key).
- Dedup: an occurrence that finds the open alert of its (rule, group key) notified within
  `dedup_window` (measured on event time from the alert's last notification) only counts
  (occurrences + 1, last_seen); past the window it notifies again (a reminder) on the same
  alert. Unset: 5 minutes; an explicit 0s turns dedup off (every occurrence notifies).
- Silence: a silence whose selector takes the occurrence and whose window holds the
  event's time suppresses every notification of it; the alert is still recorded, and not
  marked notified (so the first occurrence after the silence notifies).
- Throttle: at most `throttle_limit` firing notifications per (rule, channel) per
  `throttle_window` (processing time). Over the limit no delivery row is created; the
  suppression is counted in runbox_alerting_notifications_suppressed_total{reason=
  "throttle"} and logged. Recovery notices are not throttled (one per firing alert at
  most).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from runbox.alerting.v1 import alerting_pb2
from services.alerting import templates
from services.alerting.engine import Occurrence, selects
from services.alerting.validation import DEFAULT_DEDUP_WINDOW

log = logging.getLogger(__name__)

DEDUP = "dedup"
SILENCE = "silence"
THROTTLE = "throttle"
GROUP_KEY_LIMIT = 255


def group_key(rule: alerting_pb2.Rule, context: Mapping[str, Any]) -> str:
    """The rendered group key. A key is one line: one that renders blank or with a line
    break (a failing template renders the default message, which has several) is replaced
    by the default key."""
    key = templates.render(rule.group_key.strip() or templates.DEFAULT_GROUP_KEY, context)
    if not key.strip() or "\n" in key.strip():
        log.warning("group key of rule %s rendered unusable; the default is used", rule.id)
        key = templates.render(templates.DEFAULT_GROUP_KEY, context)
    return key.strip()[:GROUP_KEY_LIMIT]


def deduplicated(last_notified_at: datetime | None, at: datetime, window: timedelta | None) -> bool:
    """Whether an occurrence at `at` of an open alert last notified at `last_notified_at`
    stays quiet. An unset window is the default (5 minutes); a zero one turns dedup off."""
    if last_notified_at is None:
        return False
    if window is None:
        window = DEFAULT_DEDUP_WINDOW
    if window <= timedelta(0):
        return False
    return at - last_notified_at < window


@dataclass(frozen=True)
class SilenceWindow:
    """A silence as noise control needs it."""

    id: str
    selector: alerting_pb2.Selector
    starts_at: datetime
    ends_at: datetime
    expired_at: datetime | None = None

    def active(self, at: datetime) -> bool:
        end = self.ends_at if self.expired_at is None else min(self.ends_at, self.expired_at)
        return self.starts_at <= at < end


def silencing(
    silences: Sequence[SilenceWindow],
    occ: Occurrence,
    tags: frozenset[str] | None,
    at: datetime,
) -> SilenceWindow | None:
    """The first silence that covers the occurrence at `at`, if any."""
    for silence in silences:
        if silence.active(at) and selects(silence.selector, occ, tags):
            return silence
    return None


def throttled(sent_in_window: int, limit: int, window: timedelta | None) -> bool:
    """Whether one more notification of a rule to a channel is over its throttle."""
    if limit <= 0 or window is None or window <= timedelta(0):
        return False
    return sent_in_window >= limit
