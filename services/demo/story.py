"""``mscc run --demo``: the hub's day in a minute, told on stdout while the hub runs.

1. Two trusts' Acute Oncology teams get an endpoint (``receiver.py``: one of them flaky at first) and
   subscribe, each with its own client and token, to what the hub tells them.
2. Referrals arrive: Wirral's PAS sends a REF^I12 over MLLP (then resends it, and a fragment that is
   not HL7v2 arrives too), Chester's EPR posts a FHIR ServiceRequest that says nothing readable about
   neurology, and Wirral's PAS sends an ADT^A08.
3. The mapper turns them into the pathway (CarePlan with its MRI deadline, data-quality Task).
4. The MSCC team moves Wirral's referral along the pathway (``$transition``) and an HNA is completed.
5. Every notification that follows arrives at the receiver as it happens; then a summary, and the hub
   keeps running until Ctrl-C.

Each line starts with ``demo:`` and goes to stdout (the hub's log goes to stderr). Everything is
fictional and new on every run (``messages.py``), so the demo can be run again on the same data.
"""

from __future__ import annotations

import asyncio
import logging
import sys
from collections.abc import Callable

import aiohttp

from shared.settings import Settings
from shared.store import Store

from . import messages as m
from .receiver import Receiver
from .summary import Expected, Tally, summary_lines
from .traffic import Hub, trust_client

log = logging.getLogger("mscc.demo")
Say = Callable[[str], None]
LOOPBACK = "127.0.0.1"
WAIT_S = 45.0  # for the mapper, and then for the notifications


def say(text: str) -> None:
    print(f"demo: {text}", file=sys.stdout, flush=True)


def demo_settings(settings: Settings) -> Settings:
    """The settings ``mscc run --demo`` runs the hub with: in development, rest-hook callbacks to this
    machine over plain http are allowed (the demo's receiver is on 127.0.0.1). Production is left as it
    is, and the demo then explains that it does not run there."""
    if settings.environment != "development":
        return settings
    hosts = list(settings.notifier_allowed_hosts)
    if LOOPBACK not in hosts:
        hosts.append(LOOPBACK)
    return settings.model_copy(update={"notifier_allow_http": True, "notifier_allowed_hosts": hosts})


def _cannot_run(settings: Settings) -> str | None:
    """Why the demo cannot run with these settings, in words that say what to change; None: it can."""
    if settings.environment != "development":
        return "the demo runs in development only (MSCC_ENVIRONMENT=development): it registers demo clients"
    if not settings.allow_dev_client or settings.dev_client_ods.upper() != settings.receiving_facility.upper():
        return (
            "the demo acts as the MSCC team through the development client: set MSCC_ALLOW_DEV_CLIENT=true and "
            "MSCC_DEV_CLIENT_ODS to the hub's own organisation (MSCC_RECEIVING_FACILITY)"
        )
    if not settings.notifier_allow_http or LOOPBACK not in settings.notifier_allowed_hosts:
        return "the demo's receiver needs http callbacks to 127.0.0.1 (run it with 'mscc run --demo')"
    return None


async def run_demo(settings: Settings, store: Store, http_port: int, mllp_port: int) -> bool:
    """Play the demo against the running hub, print the summary, then keep the receiver answering until
    cancelled (the hub stopping). False when it could not run or something expected did not happen."""
    reason = _cannot_run(settings)
    if reason:
        say(f"not run: {reason}")
        return False
    host = LOOPBACK if settings.http_host in ("0.0.0.0", "::", "") else settings.http_host
    mllp_host = LOOPBACK if settings.mllp_host in ("0.0.0.0", "::", "") else settings.mllp_host
    receiver = Receiver(say)
    try:
        async with aiohttp.ClientSession() as session:
            hub = Hub(session, f"http://{host}:{http_port}", (mllp_host, mllp_port))
            try:
                complete = await Story(settings, store, hub, receiver).play()
            except Exception as exc:  # the demo must say why it stopped, and never take the hub down
                log.exception("the demo stopped")
                say(f"stopped: {type(exc).__name__}: {exc} (the hub keeps running; see the log)")
                complete = False
            finally:
                await hub.close()
        await asyncio.Event().wait()  # the receiver keeps answering while the hub runs, until cancelled
    finally:
        await receiver.stop()
    return complete


class Story:
    def __init__(self, settings: Settings, store: Store, hub: Hub, receiver: Receiver) -> None:
        self.settings = settings
        self.store = store
        self.hub = hub
        self.receiver = receiver
        self.run = m.Run()
        self.tally = Tally()
        self.tokens: dict[str, dict[str, str]] = {}  # ODS code -> Authorization header

    async def play(self) -> bool:
        run = self.run
        say("=" * 78)
        say(f"MSCC hub demo, run {run.id}. Everyone in it is fictional: the NHS numbers")
        say(f"({m.WIRRAL.nhs_number}, {m.CHESTER.nhs_number}) are test numbers that pass the modulus 11 check.")
        say("=" * 78)
        await self._subscribe()
        referrals = await self._referrals()
        await self._mapped(referrals)
        await self._pathway(referrals[m.WIRRAL.ods])
        expected = self._expected(referrals)
        say("")
        say("5. Waiting for the notifications still on their way ...")
        done = await self.receiver.wait_until(lambda: all(e.met(self.receiver.received) for e in expected), WAIT_S)
        missing = [e.label for e in expected if not e.met(self.receiver.received)]
        counts = await self.tally.mapped_counts(self.store, run.started)
        metrics = (await self.hub.request("GET", "/metrics")).status == 200
        for line in summary_lines(self.tally, counts, self.receiver, self.hub.base, missing, metrics=metrics):
            say(line)
        if done:
            say("Demo complete. The hub keeps running (Ctrl-C stops it).")
        else:
            say(f"Demo incomplete: no notification yet for {'; '.join(missing)}. The hub keeps running.")
        return done

    # -- 1 and 2: endpoints and subscriptions ------------------------------------------------------

    async def _subscribe(self) -> None:
        say("")
        base = await self.receiver.start()
        say(f"1. The trusts' Acute Oncology endpoints listen at {base}/aos/RBL and /aos/RJR;")
        say("   /aos/RJR/flaky answers 503 (Retry-After) to its first notifications, then 200.")
        removed = await self._remove_earlier_subscriptions()
        if removed:
            say(f"   (removed {removed} subscription(s) of an earlier demo run, whose endpoint is gone)")
        say("2. Each trust registers as an API client, gets a token and subscribes in its own name:")
        for trust in m.TRUSTS:
            client_id, secret = await trust_client(self.store, trust, self.run)
            self.tokens[trust.ods] = await self.hub.token(client_id, secret)
        rbl, rjr = m.WIRRAL, m.CHESTER
        rbl_referrals = f"ServiceRequest?requester=Organization/{rbl.ods}"
        wanted = [
            (rbl, "referral-status", self.receiver.endpoint(rbl.ods), rbl_referrals),
            (rbl, "hna-completed", self.receiver.endpoint(rbl.ods), rbl_referrals),
            (
                rjr,
                "referral-status",
                self.receiver.endpoint(rjr.ods, flaky=True),
                "ServiceRequest?requester=Organization/RJR",
            ),
            (rjr, "data-quality", self.receiver.endpoint(rjr.ods), "Task?owner=Organization/RJR"),
        ]
        for trust, topic, endpoint, query in wanted:
            body = m.subscription(self.settings.base_url, trust, topic, endpoint, [query])
            answer = await self.hub.request("POST", "/fhir/Subscription", body, self.tokens[trust.ods])
            self.tally.add(trust.ods, f"Subscription to {topic}", answer.status)
            if answer.status != 201:
                raise RuntimeError(
                    f"{trust.ods}'s subscription to {topic} was refused ({answer.status}): {answer.issue()}"
                )
            self.receiver.secrets[answer.body["id"]] = answer.headers.get("x-subscription-secret", "")
            say(f"   {trust.ods} subscribes to '{topic}' ({query}) -> {answer.status} Subscription/{answer.body['id']}")
        # The rules hold: a trust may not subscribe to another trust's referrals.
        body = m.subscription(
            self.settings.base_url, rjr, "referral-status", self.receiver.endpoint(rjr.ods), [rbl_referrals]
        )
        answer = await self.hub.request("POST", "/fhir/Subscription", body, self.tokens[rjr.ods])
        self.tally.add(rjr.ods, "Subscription to RBL's referrals", answer.status)
        say(f"   RJR tries to subscribe to RBL's referrals -> {answer.status}: {answer.issue()}")
        shaken = await self.receiver.wait_until(lambda: self.receiver.handshakes >= len(wanted), 15)
        say(f"   handshakes answered: {self.receiver.handshakes} of {len(wanted)}" + ("" if shaken else " (so far)"))

    async def _remove_earlier_subscriptions(self) -> int:
        """Delete the demo's own subscriptions left by an earlier run (the MSCC team manages every trust's)."""
        removed = 0
        found = await self.hub.search("/fhir/Subscription", _count="100")
        for sub in found:
            if str(sub.get("reason", "")).startswith(m.DEMO_REASON):
                answer = await self.hub.request("DELETE", f"/fhir/Subscription/{sub['id']}")
                removed += answer.status in (200, 204)
        return removed

    # -- 3: referrals ------------------------------------------------------------------------------

    async def _referrals(self) -> dict[str, str]:
        """Send the referrals; the ServiceRequest id of each trust's referral."""
        say("")
        say("3. Referrals arrive.")
        referral = m.wirral_referral(self.run)
        ack = await self.hub.send_hl7(referral)
        self.tally.add("RBL", "REF^I12 over MLLP", _ack_code(ack))
        say(f"   RBL's PAS sends a REF^I12 over MLLP (PRD, PV1, the on-call doctor's notes); ACK: {ack}")
        again = await self.hub.send_hl7(referral)
        self.tally.add("RBL", "the same REF^I12 again", _ack_code(again))
        same = "the original ACK, byte for byte" if again == ack else f"another ACK: {again}"
        say(f"   ... and sends it again (a resend after a timeout): stored once, {same}")
        junk = await self.hub.send_hl7(m.NOT_HL7)
        self.tally.add("?", "a fragment with no MSH", _ack_code(junk))
        say(f"   a fragment with no MSH arrives: refused and kept with the reason; ACK: {junk}")
        answer = await self.hub.request(
            "POST", "/fhir/ServiceRequest", m.chester_referral(self.run), self.tokens[m.CHESTER.ods]
        )
        self.tally.add("RJR", "POST /fhir/ServiceRequest", answer.status)
        location = answer.headers.get("location", "")
        say(f"   RJR's EPR: POST /fhir/ServiceRequest -> {answer.status}, Location {location or answer.issue()}")
        adt = await self.hub.send_hl7(m.wirral_transfer(self.run))
        self.tally.add("RBL", "ADT^A08 over MLLP", _ack_code(adt))
        say(f"   RBL's PAS: ADT^A08, the patient moved to ward 21 with a new phone number; ACK: {adt}")
        if answer.status != 201:
            raise RuntimeError(f"RJR's referral was refused ({answer.status}): {answer.issue()}")
        chester_id = location.split("/ServiceRequest/", 1)[-1].split("/", 1)[0]
        wirral_id = await self._wirral_referral_id()
        return {m.WIRRAL.ods: wirral_id, m.CHESTER.ods: chester_id}

    async def _wirral_referral_id(self) -> str:
        """The id of the ServiceRequest the mapper made of RBL's REF^I12 (waiting for it)."""
        since = f"ge{self.run.started:%Y-%m-%dT%H:%M:%SZ}"
        for _ in range(int(WAIT_S * 4)):
            for sr in await self.hub.search(
                "/fhir/ServiceRequest", requester="Organization/RBL", _lastUpdated=since, _count="100"
            ):
                if any(i.get("value") == self.run.wirral_referral for i in sr.get("identifier") or []):
                    return str(sr["id"])
            await asyncio.sleep(0.25)
        raise RuntimeError(f"the mapper did not map RBL's referral {self.run.wirral_referral} within {WAIT_S:.0f} s")

    async def _mapped(self, referrals: dict[str, str]) -> None:
        """Show what each referral became: its pathway CarePlan (MRI deadline) and data-quality Task."""
        for ods, referral_id in referrals.items():
            plan = await self._find("/fhir/CarePlan", "supportingInfo", f"ServiceRequest/{referral_id}")
            task = await self._find("/fhir/Task", "focus", f"ServiceRequest/{referral_id}")
            if plan is not None:
                mri = plan["activity"][0]["detail"]
                due = (mri.get("scheduledPeriod") or {}).get("end", "(no start time)")
                say(f"mapped: CarePlan/{plan['id']} for {ods}'s referral: {mri['description']} due {due}")
                say(f"        {plan.get('description', '')}")
            if task is not None:
                asks = [str(i.get("valueString")) for i in task.get("input") or [] if i.get("valueString")]
                state = "nothing missing" if task.get("status") == "completed" else "lacks: " + "; ".join(asks)
                say(f"        data-quality Task/{task['id']}: {task.get('status')}, {state}")

    async def _find(self, path: str, element: str, reference: str) -> m.Json | None:
        """The first resource of this run at ``path`` whose ``element`` refers to ``reference`` (waiting
        for the mapper to write it), or None."""
        since = f"ge{self.run.started:%Y-%m-%dT%H:%M:%SZ}"
        for _ in range(int(WAIT_S * 4)):
            for found in await self.hub.search(path, _lastUpdated=since, _count="100"):
                refs = found.get(element)
                refs = refs if isinstance(refs, list) else [refs]
                if any(isinstance(r, dict) and r.get("reference") == reference for r in refs):
                    return found
            await asyncio.sleep(0.25)
        return None

    # -- 4: the pathway and the HNA ------------------------------------------------------------------

    async def _pathway(self, referral_id: str) -> None:
        say("")
        say("4. The MSCC team moves RBL's referral along the pathway ($transition):")
        steps = [
            ("triaged-accepted", "Accepted: cord compression likely, MRI today"),
            ("mri-requested", "Whole-spine MRI booked for 14:00"),
            ("mri-reported", "MRI: compression at T8, for radiotherapy planning"),
        ]
        for step, note in steps:
            answer = await self.hub.request(
                "POST", f"/fhir/ServiceRequest/{referral_id}/$transition", m.transition(step, note)
            )
            self.tally.add("REN", f"$transition {step}", answer.status)
            outcome = "" if answer.status == 200 else f": {answer.issue()}"
            say(f"   {step:<17} -> {answer.status}{outcome}")
        answer = await self.hub.request("POST", "/fhir", m.hna_message(self.run), self.tokens[m.WIRRAL.ods])
        self.tally.add("RBL", "HNA (message Bundle)", answer.status)
        say(f"   RBL's cancer support worker completes an HNA with the patient: POST /fhir -> {answer.status}")

    def _expected(self, referrals: dict[str, str]) -> list[Expected]:
        rbl, rjr = referrals[m.WIRRAL.ods], referrals[m.CHESTER.ods]
        return [
            Expected("RBL referral created", "RBL", "referral-status", f"ServiceRequest/{rbl}", kind="created"),
            Expected("RBL MRI reported", "RBL", "referral-status", f"ServiceRequest/{rbl}", text="mri-reported"),
            Expected("RBL HNA support plan", "RBL", "hna-completed", "CarePlan/"),
            Expected("RJR referral (after 503)", "RJR", "referral-status", f"ServiceRequest/{rjr}", retried=True),
            Expected("RJR data-quality gap", "RJR", "data-quality", "Task/", text="lacks"),
        ]


def _ack_code(ack: str) -> str:
    """MSA-1 of an ACK on one line (`` | `` between segments)."""
    for segment in ack.split(" | "):
        if segment.startswith("MSA|"):
            return segment.split("|")[1]
    return "?"
