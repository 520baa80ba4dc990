"""The one place that names every access-log field, log category and metric nsp-proxy emits.

Field and category names are Azure's (NSPAccessLogs table, network-security-perimeter-diagnostic-logs), so
that queries written against Azure's logs work on ours. Metric names follow Prometheus conventions; no label
ever carries a host name or an address (unbounded cardinality, and personal data).
"""

from __future__ import annotations

from enum import StrEnum


class Category(StrEnum):
    PUBLIC_INBOUND_PERIMETER_ALLOWED = "NspPublicInboundPerimeterRulesAllowed"
    PUBLIC_INBOUND_PERIMETER_DENIED = "NspPublicInboundPerimeterRulesDenied"
    PUBLIC_OUTBOUND_PERIMETER_ALLOWED = "NspPublicOutboundPerimeterRulesAllowed"
    PUBLIC_OUTBOUND_PERIMETER_DENIED = "NspPublicOutboundPerimeterRulesDenied"
    OUTBOUND_ATTEMPT = "NspOutboundAttempt"
    INTRA_PERIMETER_INBOUND_ALLOWED = "NspIntraPerimeterInboundAllowed"
    PUBLIC_INBOUND_RESOURCE_ALLOWED = "NspPublicInboundResourceRulesAllowed"
    PUBLIC_INBOUND_RESOURCE_DENIED = "NspPublicInboundResourceRulesDenied"
    PUBLIC_OUTBOUND_RESOURCE_ALLOWED = "NspPublicOutboundResourceRulesAllowed"
    PUBLIC_OUTBOUND_RESOURCE_DENIED = "NspPublicOutboundResourceRulesDenied"
    PRIVATE_INBOUND_ALLOWED = "NspPrivateInboundAllowed"
    CROSS_PERIMETER_INBOUND_ALLOWED = "NspCrossPerimeterInboundAllowed"
    CROSS_PERIMETER_OUTBOUND_ALLOWED = "NspCrossPerimeterOutboundAllowed"
    # nsp-proxy's own: a request refused for its wire form (framing, limits, obs-fold, h2c...) before any rule
    # was consulted; always ResultAction Denied, RuleType None. Not an Azure category.
    PROXY_REQUEST_REFUSED = "NspProxyRequestRefused"
    # nsp-proxy extensions (not Azure categories): one record per query the sidecar's DNS gate answers.
    DNS_QUERY_ALLOWED = "NspProxyDnsQueryAllowed"  # resolved upstream and answered (Transition: also would-deny)
    DNS_QUERY_DENIED = "NspProxyDnsQueryDenied"  # answered NXDOMAIN without any upstream query


class Field(StrEnum):
    """NSPAccessLogs columns, in the order records are written."""

    TIME_GENERATED = "TimeGenerated"
    TIME_GENERATED_END_TIME = "TimeGeneratedEndTime"
    COUNT = "Count"
    CATEGORY = "Category"
    OPERATION_NAME = "OperationName"
    OPERATION_VERSION = "OperationVersion"
    RESULT_ACTION = "ResultAction"
    RESULT_DIRECTION = "ResultDirection"
    RESULT_DESCRIPTION = "ResultDescription"
    RULE_TYPE = "RuleType"
    MATCHED_RULE = "MatchedRule"
    PROFILE = "Profile"
    ACCESS_RULE_VERSION = "AccessRuleVersion"
    TRAFFIC_TYPE = "TrafficType"
    SOURCE_IP_ADDRESS = "SourceIpAddress"
    SOURCE_PORT = "SourcePort"
    SOURCE_PROTOCOL = "SourceProtocol"
    SOURCE_RESOURCE_ID = "SourceResourceId"
    SOURCE_APP_ID = "SourceAppId"
    SOURCE_PERIMETER_GUIDS = "SourcePerimeterGuids"
    SOURCE_PARAMETERS = "SourceParameters"
    DESTINATION_FQDN = "DestinationFqdn"
    DESTINATION_PORT = "DestinationPort"
    DESTINATION_PROTOCOL = "DestinationProtocol"
    DESTINATION_RESOURCE_ID = "DestinationResourceId"
    DESTINATION_EMAIL_ADDRESS = "DestinationEmailAddress"
    DESTINATION_PHONE_NUMBER = "DestinationPhoneNumber"
    DESTINATION_PARAMETERS = "DestinationParameters"
    SERVICE_FQDN = "ServiceFqdn"
    SERVICE_RESOURCE_ID = "ServiceResourceId"
    LOCATION = "Location"
    APP_ID = "AppId"
    PARAMETERS = "Parameters"  # nsp-proxy extension inside Azure's Parameters column: mode, association


class ResultAction(StrEnum):
    APPROVED = "Approved"
    DENIED = "Denied"


class TrafficType(StrEnum):
    PRIVATE = "Private"
    PUBLIC = "Public"
    INTRA = "Intra"
    CROSS = "Cross"


class RuleType(StrEnum):
    """What kind of rule (or built-in behaviour) produced a decision: nsp-proxy's own detail, shown by
    ``explain``. The access log's RuleType column says only where the rule is defined (``LOG_RULE_TYPES``)."""

    ADDRESS_PREFIXES = "AddressPrefixes"
    SUBSCRIPTIONS = "Subscriptions"
    FQDNS = "FullyQualifiedDomainNames"
    PERIMETERS = "NetworkSecurityPerimeters"
    INTRA_PERIMETER = "IntraPerimeter"
    PRIVATE_ENDPOINT = "PrivateEndpoint"
    RESOURCE_RULES = "ResourceRules"
    NONE = "None"


# Metric names (prometheus_client adds the _total suffix to counters on exposition).
METRIC_DECISIONS = "nsp_decisions"
METRIC_WOULD_DENY = "nsp_would_deny"
METRIC_DECISION_SECONDS = "nsp_decision_duration_seconds"
METRIC_DECISION_ERRORS = "nsp_decision_errors"
METRIC_RELOADS = "nsp_config_reloads"
METRIC_GENERATION = "nsp_config_generation"
METRIC_LOG_RECORDS = "nsp_access_log_records"
METRIC_LOG_ERRORS = "nsp_access_log_errors"  # label reason: LOG_ERROR_REASONS

DECISION_LABELS = ("direction", "result", "category", "mode", "profile", "resource")
WOULD_DENY_LABELS = ("direction", "mode", "profile", "resource")

# Access-log reliability (proxy.records.logwriter): records dropped because the queue was full (Transition/Audit keep
# serving) or still queued when the shutdown flush timed out; Enforced requests refused with 503 because their
# record could not be taken; records waiting in the queue.
METRIC_LOG_DROPPED = "nsp_access_log_dropped"
METRIC_LOG_REFUSED = "nsp_access_log_refused_requests"
METRIC_LOG_QUEUE = "nsp_access_log_queue_depth"
LOG_ERROR_REASONS = ("write", "build")  # write: the file/pipe refused the bytes; build: the record failed
# Connection limits and timeouts (addons.limits): connections closed at client_connected because the listener
# had settings.maxClientConnections open; connections and requests ended by a settings.timeouts timer.
METRIC_CONNECTIONS_REFUSED = "nsp_connections_refused"
METRIC_TIMEOUTS = "nsp_timeouts"
TIMEOUT_KINDS = ("upstreamConnect", "upstreamResponse", "clientHeaders", "idle")
DIRECTIONS = ("Inbound", "Outbound")
RELOAD_RESULTS = ("success", "failure")

# DestinationParameters keys nsp-proxy adds to an allowed request's record once its outcome is known.
PARAM_UPSTREAM_STATUS = "upstreamStatus"  # the status the client got: the upstream's, or the proxy's 502/504
PARAM_UPSTREAM_ERROR = "upstreamError"  # why there was no upstream response (short text, no errno/address)

# The RuleType column (NSPAccessLogs: "where the rule is defined: NSP or PaaS resource"): "PaaS" when the
# resource's own network rules decided (Transition fallback), "NSP" for everything the perimeter decided
# (access rules, intra-perimeter, private endpoints, and perimeter denials where no rule matched). Records of
# nsp-proxy's own refusals (categories in PROXY_CATEGORIES, no rule at all) write "None".
RULE_TYPE_NSP = "NSP"
RULE_TYPE_PAAS = "PaaS"
RULE_TYPE_NONE = "None"
LOG_RULE_TYPES = {kind: (RULE_TYPE_PAAS if kind is RuleType.RESOURCE_RULES else RULE_TYPE_NSP) for kind in RuleType}
# MatchedRule of a Transition decision the resource's own IP firewall allowed, as Azure logs it (AI Search's NSP
# page: a resource-rule match shows {"accessRule": "IP firewall"}).
RESOURCE_FIREWALL_RULE = "IP firewall"
PROXY_CATEGORIES = frozenset({"NspProxyRequestRefused"})  # nsp-proxy extensions: not decisions of a rule
# SourceProtocol/DestinationProtocol are "{AppProtocol}:{TransportProtocol}" (e.g. HTTPS:TCP). A CONNECT tunnel
# whose bytes nsp-proxy has not seen (no TLS ClientHello, no request) has no known application protocol: its
# records say TCP:TCP (the tunnel itself is the application-level unit that was decided).
LOG_PROTOCOLS = {"HTTP": "HTTP:TCP", "HTTPS": "HTTPS:TCP", "TCP": "TCP:TCP"}
# settings.accessLogFormat: the NSPAccessLogs table's flat columns, or the nested shape diagnostic settings
# send to storage accounts and event hubs.
LOG_FORMAT_TABLE = "nspAccessLogs"
LOG_FORMAT_DIAGNOSTIC = "diagnostic"
LOG_FORMATS = (LOG_FORMAT_TABLE, LOG_FORMAT_DIAGNOSTIC)
# The DNS gate's record: DestinationParameters keys (query type, the answer code and the addresses answered).
PARAM_DNS_QTYPE = "dnsQueryType"
PARAM_DNS_RCODE = "dnsResponseCode"
PARAM_DNS_ANSWERS = "dnsAnswers"
