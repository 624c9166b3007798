"""How codes reach people. KYC_SENDER picks one:

- outbox (default): the message goes into the outbox table, in the caller's transaction, and
  a log line with the recipient masked. A relay delivers from the table; in development
  `kyc outbox` shows the codes. A message holds its code in plain text (it must reach the
  person), so it is kept only while the code is valid: the schedule deletes it after
  (purge_outbox, every minute).
- http: the message is POSTed as JSON to KYC_SENDER_URL (an SMS/email provider or a relay).
  Sent inside the caller's transaction, before it commits: a failed send raises SendFailed and
  the verification is not created, so nobody waits for a code that never left.
"""

from __future__ import annotations

import json
import logging
import urllib.error
import urllib.request
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Protocol

from sqlalchemy import delete
from sqlalchemy.orm import Session

from kyc.config import SENDERS, Config
from kyc.errors import SendFailed
from kyc.inputs import rfc3339
from kyc.models import OutboxMessage, utcnow
from kyc.security import mask_email, mask_phone

log = logging.getLogger("kyc.verification")


@dataclass(frozen=True)
class Message:
    verification_id: str
    channel: str             # email | sms
    recipient: str           # email address or E.164 number
    code: str
    expires_at: datetime
    valid_minutes: int = 10

    @property
    def text(self) -> str:
        return f"Your verification code is {self.code}. It expires in {self.valid_minutes} minutes; never share it."

    @property
    def masked_recipient(self) -> str:
        return mask_email(self.recipient) if self.channel == "email" else mask_phone(self.recipient)


class Sender(Protocol):
    def send(self, session: Session, message: Message) -> None:
        """Deliver (or durably queue) the message; raise SendFailed if it cannot."""


class OutboxSender:
    def send(self, session: Session, message: Message) -> None:
        session.add(OutboxMessage(verification_id=message.verification_id, channel=message.channel,
                                  recipient=message.recipient, body=message.text))
        log.info("code for %s queued in the outbox: %s to %s", message.verification_id, message.channel,
                 message.masked_recipient)


def purge_outbox(session: Session, code_ttl_seconds: int, now: datetime | None = None) -> int:
    """Delete the outbox messages whose code has expired; returns how many. The verification
    itself keeps only the code's hash."""
    cutoff = (now or utcnow()) - timedelta(seconds=code_ttl_seconds)
    return session.execute(delete(OutboxMessage).where(OutboxMessage.created_at <= cutoff)).rowcount


class HttpSender:
    def __init__(self, url: str, timeout: float):
        if not url:
            raise ValueError("KYC_SENDER=http needs KYC_SENDER_URL")
        self.url, self.timeout = url, timeout

    def send(self, session: Session, message: Message) -> None:
        payload = json.dumps({
            "verification_id": message.verification_id, "channel": message.channel, "to": message.recipient,
            "code": message.code, "text": message.text, "expires_at": rfc3339(message.expires_at),
        }).encode()
        request = urllib.request.Request(self.url, data=payload, method="POST",
                                         headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(request, timeout=self.timeout) as response:  # noqa: S310 - configured URL
                status = response.status
        except urllib.error.HTTPError as exc:
            status = exc.code
        except (urllib.error.URLError, OSError) as exc:
            log.warning("sender unreachable for %s: %s", message.verification_id, exc)
            raise SendFailed("the code could not be sent: sender unreachable") from None
        if not 200 <= status < 300:
            log.warning("sender refused %s with HTTP %d", message.verification_id, status)
            raise SendFailed(f"the code could not be sent: sender answered {status}")
        log.info("code for %s sent over http: %s to %s", message.verification_id, message.channel,
                 message.masked_recipient)


def make_sender(config: Config) -> Sender:
    if config.sender == "outbox":
        return OutboxSender()
    if config.sender == "http":
        return HttpSender(config.sender_url, config.sender_timeout_seconds)
    raise ValueError(f"KYC_SENDER must be one of {', '.join(SENDERS)}, not {config.sender!r}")
