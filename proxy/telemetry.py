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
    """What kind of rule (or built-in behaviour) produced a decision."""

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
METRIC_LOG_ERRORS = "nsp_access_log_write_errors"

DECISION_LABELS = ("direction", "result", "category", "mode", "profile", "resource")
WOULD_DENY_LABELS = ("direction", "mode", "profile", "resource")
