from badge_worker.domain.errors import MESSAGES, WHEN, ErrorCode, markdown_table, reject

CONTRACT_CODES = {804, 812, 716, 717, 400, 404, 809, 810, 811, 814, 815, 816, 750, 1040, 830, 831, 832, 500}


def test_catalogue_holds_every_contract_code_with_text() -> None:
    assert {int(c) for c in ErrorCode} == CONTRACT_CODES
    for code in ErrorCode:
        assert MESSAGES[code].strip()
        assert WHEN[code].strip()


def test_seed_texts_are_kept() -> None:
    assert MESSAGES[ErrorCode.REQUEST_ID_REUSED] == "Request with the same requestId is not allowed"
    assert MESSAGES[ErrorCode.ISSUE_REQUIRED] == "Badge issue is mandatory before earn"
    assert MESSAGES[ErrorCode.OWNER_ID_MISSING] == "OwnerId is mandatory."
    assert MESSAGES[ErrorCode.INVALID_VALUE] == "Invalid enum value."
    assert MESSAGES[ErrorCode.BADGE_NOT_FOUND] == "Passed badge is not found"


def test_reject_joins_the_specific_clause() -> None:
    assert reject(ErrorCode.BADGE_NOT_LIVE, "ended").message == "Badge is not live: ended"
    assert reject(ErrorCode.INVALID_VALUE, "bad").message == "Invalid enum value. bad"
    r = reject(ErrorCode.REQUEST_ID_REUSED, firstUsedBy="t/0/1")
    assert r.as_error() == {"code": 809, "message": MESSAGES[ErrorCode.REQUEST_ID_REUSED],
                            "detail": {"firstUsedBy": "t/0/1"}}
    assert reject(ErrorCode.REQUEST_ID_MISSING).as_error() == {"code": 804, "message": "RequestId is mandatory."}


def test_docs_table_is_generated_from_the_catalogue() -> None:
    table = markdown_table()
    for code in ErrorCode:
        assert f"| {int(code)} | {MESSAGES[code]} |" in table
