"""The sidecar's DNS gate (``settings.dnsGate``): the only DNS server a workload's namespace can reach.

Each query is decided like an outbound request to the queried name (protocol ``DNS``, the caller attributed by
``outboundSourcePrefixes`` of the transparent listener) and gets exactly one record, with an nsp-proxy category:
``NspProxyDnsQueryAllowed`` or ``NspProxyDnsQueryDenied``.

  allowed      A/AAAA resolved with the configured nameservers (``proxy.names.resolver``, TTL-cached, addresses in
               blockedDestinationPrefixes dropped) and answered; the answers are remembered (``proxy.names.dnsmemory``)
               so a transparent connection to one of them without SNI/Host is attributed to the name. Other
               query types are answered with no records (NOERROR, no data): nothing is asked upstream.
  Enforced     a name no rule allows gets NXDOMAIN and is never looked up anywhere (the query cannot carry
               data out through a recursive resolver)
  Transition   such a name is resolved and answered, and recorded as would-deny
  log failing  in Enforced, a query the access log cannot take (queue full, writes failing: ``proxy.records.recorder``)
               is answered REFUSED and never looked up; Transition answers it and counts the lost record

Servers: UDP and TCP on the same address (asyncio, messages parsed by dnspython). Bounded: UDP queries over
512 bytes and TCP messages over ``MAX_TCP_MESSAGE`` are dropped, at most ``MAX_PENDING_UDP`` UDP queries are
answered at once, one question per message, a TCP connection is closed after ``TCP_IDLE_SECONDS`` idle.
"""

from __future__ import annotations

import asyncio
import logging
import struct
from collections.abc import Callable
from dataclasses import replace
from typing import TYPE_CHECKING

import dns.exception
import dns.flags
import dns.message
import dns.rcode
import dns.rdataclass
import dns.rdatatype
import dns.rrset

from proxy.decision.engine import attribute_outbound
from proxy.decision.facts import Decision, OutboundFacts
from proxy.names import addresses
from proxy.names.dnsmemory import AnswerMemory
from proxy.names.normalize import canonical_destination
from proxy.names.resolver import ResolutionError
from proxy.telemetry import PARAM_DNS_ANSWERS, PARAM_DNS_QTYPE, PARAM_DNS_RCODE, Category

if TYPE_CHECKING:
    from proxy.runtime import Runtime

log = logging.getLogger("nsp-proxy")

ANSWER_TTL = 30  # seconds: the TTL the gate gives its answers (short, so rules and pins stay current)
MAX_UDP_QUERY = 512
MAX_PENDING_UDP = 256  # UDP queries being answered at once; more are dropped (the client retries)
MAX_TCP_MESSAGE = 4096
TCP_IDLE_SECONDS = 10.0


class DnsGate:
    def __init__(self, runtime: Callable[[], Runtime | None], answers: AnswerMemory) -> None:
        self.runtime = runtime  # the runtime in force (read per query)
        self.answers = answers
        self._udp: asyncio.DatagramTransport | None = None
        self._tcp: asyncio.AbstractServer | None = None

    async def start(self, host: str, port: int) -> None:
        loop = asyncio.get_running_loop()
        self._udp, _ = await loop.create_datagram_endpoint(lambda: _Udp(self), local_addr=(host, port))
        self._tcp = await asyncio.start_server(self._serve_tcp, host, port)

    def stop(self) -> None:
        if self._udp:
            self._udp.close()
        if self._tcp:
            self._tcp.close()

    async def answer(self, wire: bytes, peer: tuple[str, int], transport: str = "UDP") -> bytes | None:
        """The response to one query message (None: not a query we answer at all); ``transport`` (UDP or
        TCP) is logged in the record's protocols (``DNS:UDP``)."""
        try:
            query = dns.message.from_wire(wire)
        except (dns.exception.DNSException, ValueError):
            return None
        if query.flags & dns.flags.QR:
            return None  # a response: never answered (no reflection loops)
        response = dns.message.make_response(query)
        if len(query.question) != 1:
            response.set_rcode(dns.rcode.FORMERR)
            return response.to_wire()
        response.flags |= dns.flags.RA  # the workload's resolver gets answers, not referrals
        runtime = self.runtime()
        if runtime is None:
            response.set_rcode(dns.rcode.REFUSED)
            return response.to_wire()
        self.answers.limit = runtime.policy.config.settings.dns_gate_memory  # a reload may change it
        question = query.question[0]
        await self._decide(runtime, question, peer, response, transport)
        return response.to_wire()

    async def _decide(self, runtime: Runtime, question: dns.rrset.RRset, peer: tuple[str, int],
                      response: dns.message.Message, transport: str) -> None:
        qtype = dns.rdatatype.to_text(question.rdtype)
        raw = question.name.to_text(omit_final_dot=True)
        source_ip = peer[0][7:] if peer[0].lower().startswith("::ffff:") else peer[0]
        settings = runtime.policy.config.settings
        resource = attribute_outbound(runtime.policy, settings.transparent_listen_port or 0, source_ip)
        try:
            name = canonical_destination(raw)
        except ValueError:
            name = raw.lower() or "."
        facts = OutboundFacts(resource=resource, source_ip=source_ip, source_port=peer[1], destination_host=name,
                              destination_port=53, protocol=f"DNS:{transport}")
        decision = runtime.decide_outbound(facts)
        details = {PARAM_DNS_QTYPE: qtype}
        operation = f"DNS {qtype} {name}"
        recorder = runtime.recorder
        if decision.allowed and recorder.fails_closed(decision) and not recorder.accepting():
            # Enforced, and the log cannot take this query's record: it is never looked up (a lookup carries
            # the name out) and is answered REFUSED, as an HTTP request is answered 503.
            response.set_rcode(dns.rcode.REFUSED)
            details[PARAM_DNS_RCODE] = "REFUSED"
            recorder.refuse(_with_category(decision, Category.DNS_QUERY_ALLOWED), facts,
                            decision.policy or runtime.policy,
                            {"operation": operation, "destination_parameters": details},
                            "access log unavailable", status=None)
            return
        found: tuple[str, ...] = ()
        if decision.allowed and not addresses.is_literal(name) and question.rdtype in (
                dns.rdatatype.A, dns.rdatatype.AAAA):
            try:
                found = runtime.resolver.usable(await runtime.resolver.resolve(name))
            except (ResolutionError, ValueError) as exc:
                details["resolutionError"] = str(exc)
        if not decision.allowed:
            response.set_rcode(dns.rcode.NXDOMAIN)
        elif "resolutionError" in details:
            response.set_rcode(dns.rcode.SERVFAIL)
        else:
            self.answers.remember(name, found, ttl=ANSWER_TTL * 2)
            wanted = [a for a in found if (":" in a) == (question.rdtype == dns.rdatatype.AAAA)]
            if wanted:
                response.answer.append(dns.rrset.from_text_list(
                    question.name, ANSWER_TTL, dns.rdataclass.IN, question.rdtype, wanted))
        details[PARAM_DNS_RCODE] = dns.rcode.to_text(response.rcode())
        if found:
            details[PARAM_DNS_ANSWERS] = ",".join(found)
        category = Category.DNS_QUERY_ALLOWED if decision.allowed else Category.DNS_QUERY_DENIED
        runtime.record(_with_category(decision, category), facts, operation=operation,
                       destination_parameters=details)

    async def _serve_tcp(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        peer = writer.get_extra_info("peername")[:2]
        try:
            while True:
                size = struct.unpack("!H", await asyncio.wait_for(reader.readexactly(2), TCP_IDLE_SECONDS))[0]
                if size > MAX_TCP_MESSAGE:
                    break
                wire = await asyncio.wait_for(reader.readexactly(size), TCP_IDLE_SECONDS)
                reply = await self.answer(wire, peer, "TCP")
                if reply is None:
                    break
                writer.write(struct.pack("!H", len(reply)) + reply)
                await writer.drain()
        except (asyncio.IncompleteReadError, TimeoutError, ConnectionError):
            pass
        except Exception:
            log.exception("nsp-proxy: DNS gate failed on a TCP query")
        finally:
            writer.close()


class _Udp(asyncio.DatagramProtocol):
    def __init__(self, gate: DnsGate) -> None:
        self.gate = gate
        self.transport: asyncio.DatagramTransport | None = None
        self.pending: set[asyncio.Task] = set()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        if len(data) <= MAX_UDP_QUERY and len(self.pending) < MAX_PENDING_UDP:
            task = asyncio.get_running_loop().create_task(self._reply(data, addr))
            self.pending.add(task)
            task.add_done_callback(self.pending.discard)

    async def _reply(self, data: bytes, addr: tuple[str, int]) -> None:
        try:
            reply = await self.gate.answer(data, addr[:2])
        except Exception:
            log.exception("nsp-proxy: DNS gate failed on a UDP query")
            return
        if reply is not None and self.transport is not None:
            self.transport.sendto(reply if len(reply) <= MAX_UDP_QUERY else _truncated(data), addr)


def _truncated(query: bytes) -> bytes:
    """A TC response: the answer does not fit in UDP; the client retries over TCP."""
    response = dns.message.make_response(dns.message.from_wire(query))
    response.flags |= dns.flags.TC
    return response.to_wire()


def _with_category(decision: Decision, category: Category) -> Decision:
    return replace(decision, category=category)
