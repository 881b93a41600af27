import json

import pytest

from badge_worker.domain.commands import Command, CommandType, Stream, Undecodable, decode, decode_body
from badge_worker.domain.models import OwnerType
from badge_worker.seedpages import page_examples
from tests.seeds import seeds_dir

EARN = {"orgId": 100458, "requestId": "r-1", "badgeMetaId": "b1", "customerId": 62090013}


def code_of(result: Command | Undecodable) -> int:
    assert isinstance(result, Undecodable), result
    return int(result.rejection.code)


def test_seed_earn_body_works_as_is_plus_org() -> None:
    body = next(o for o in page_examples(seeds_dir())["issue-badge-earn.md"] if "earnEventDate" in o)
    cmd = decode(json.dumps({**body, "orgId": 100458}).encode(), Stream.EARNS)
    assert isinstance(cmd, Command)
    assert cmd.type is CommandType.EARN  # the default on the earns topic
    assert cmd.requestId == "2132"  # a number becomes a string
    assert cmd.customerId == 62090013
    assert cmd.owner is not None and cmd.owner.ownerType is OwnerType.LOYALTY and cmd.owner.referenceId == "123694"
    assert cmd.eventDate == pytest.approx(1699048260.192)


def test_seed_claim_body_is_a_claim() -> None:
    body = next(o for o in page_examples(seeds_dir())["claim-badge.md"] if "ownerType" in o)
    cmd = decode_body({**body, "orgId": 1, "badgeMetaId": "653df084b3cda7078c7c68f1"}, Stream.CLAIMS)
    assert isinstance(cmd, Command) and cmd.type is CommandType.CLAIM
    assert cmd.requestId is None and cmd.entity_key == (1, "badge:653df084b3cda7078c7c68f1")


@pytest.mark.parametrize("raw", [b"{not json", b"\xff\xfe", b"", None, b"[1, 2]", b'"text"', b"42"])
def test_not_a_json_object_is_400_and_goes_to_the_dlq(raw: bytes | None) -> None:
    result = decode(raw, Stream.EARNS)
    assert code_of(result) == 400
    assert isinstance(result, Undecodable) and result.not_json


@pytest.mark.parametrize(("body", "code"), [
    ({k: v for k, v in EARN.items() if k != "requestId"}, 804),
    ({**EARN, "requestId": "  "}, 804),
    ({k: v for k, v in EARN.items() if k != "customerId"}, 812),
    ({**EARN, "triggeredBy": {"referenceId": "1"}}, 716),
    ({**EARN, "triggeredBy": {"ownerType": "Loyalty"}}, 717),
    ({**EARN, "triggeredBy": {"ownerType": "Nope", "referenceId": "1"}}, 400),
    ({**EARN, "triggeredBy": "Loyalty"}, 400),
    ({**EARN, "triggeredBy": {"ownerType": "Loyalty", "referenceId": {"x": 1}}}, 400),
    ({k: v for k, v in EARN.items() if k != "orgId"}, 400),
    ({**EARN, "orgId": "acme"}, 400),
    ({**EARN, "orgId": True}, 400),
    ({**EARN, "customerId": "abc"}, 400),
    ({**EARN, "customerId": 1.5}, 400),
    ({**EARN, "requestId": {"a": 1}}, 400),
    ({**EARN, "requestId": True}, 400),
    ({**EARN, "badgeMetaId": None}, 400),
    ({**EARN, "badgeMetaId": ["b"]}, 400),
    ({**EARN, "earnEventDate": "last tuesday"}, 400),
    ({**EARN, "type": "claim"}, 400),  # not accepted on the earns topic
    ({**EARN, "type": "explode"}, 400),
    ({**EARN, "type": 7}, 400),
    ({**EARN, "type": "revokeEarn"}, 400),  # earnedBadgeId missing
    ({**EARN, "type": "revokeIssue", "issuedId": []}, 400),
])
def test_bad_earns_topic_commands_get_their_code(body: dict[str, object], code: int) -> None:
    assert code_of(decode(json.dumps(body).encode(), Stream.EARNS)) == code


def test_rejections_keep_what_could_be_read() -> None:
    result = decode_body({k: v for k, v in EARN.items() if k != "customerId"}, Stream.EARNS)
    assert isinstance(result, Undecodable)
    assert (result.orgId, result.requestId, result.type) == (100458, "r-1", "earn")


@pytest.mark.parametrize(("body", "code"), [
    ({"orgId": 1, "badgeMetaId": "b", "referenceId": "1"}, 716),
    ({"orgId": 1, "badgeMetaId": "b", "ownerType": "Loyalty"}, 717),
    ({"orgId": 1, "badgeMetaId": "b", "ownerType": "Loyalty", "referenceId": ""}, 717),
    ({"orgId": 1, "badgeMetaId": "b", "ownerType": "LOYALTEE", "referenceId": "1"}, 400),
    ({"orgId": 1, "ownerType": "Loyalty", "referenceId": "1"}, 400),
    ({"orgId": 1, "type": "earn", "badgeMetaId": "b", "ownerType": "Loyalty", "referenceId": "1"}, 400),
])
def test_bad_claims(body: dict[str, object], code: int) -> None:
    assert code_of(decode_body(body, Stream.CLAIMS)) == code


def test_every_command_type_decodes() -> None:
    unclaim = decode_body({"orgId": 1, "type": "UNCLAIM", "badgeMetaId": "b", "ownerType": "journeys",
                           "referenceId": 55}, Stream.CLAIMS)
    assert isinstance(unclaim, Command) and unclaim.type is CommandType.UNCLAIM
    assert unclaim.owner is not None and unclaim.owner.ownerType is OwnerType.JOURNEYS
    assert unclaim.owner.referenceId == "55"
    issue = decode_body({**EARN, "type": "issue", "issueEventDate": 1716803487}, Stream.EARNS)
    assert isinstance(issue, Command) and issue.type is CommandType.ISSUE and issue.eventDate == 1716803487.0
    revoke_issue = decode_body({**EARN, "type": "revokeIssue"}, Stream.EARNS)
    assert isinstance(revoke_issue, Command) and revoke_issue.issuedId is None
    revoke_issue = decode_body({**EARN, "type": "revokeissue", "issuedId": "abc"}, Stream.EARNS)
    assert isinstance(revoke_issue, Command) and revoke_issue.issuedId == "abc"
    revoke_earn = decode_body({**EARN, "type": "revokeEarn", "earnedBadgeId": "e1"}, Stream.EARNS)
    assert isinstance(revoke_earn, Command) and revoke_earn.earnedBadgeId == "e1"
    assert revoke_earn.entity_key == (100458, "customer:62090013")
    numeric = decode_body({**EARN, "customerId": "62090013", "orgId": 100458.0, "earnEventDate": None},
                          Stream.EARNS)
    assert isinstance(numeric, Command) and numeric.customerId == 62090013 and numeric.eventDate is None
