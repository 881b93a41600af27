from badge_worker.domain.errors import ErrorCode, reject
from badge_worker.domain.outcomes import envelope


def test_success_envelope_matches_the_contract_shape() -> None:
    data = {"badgeMetaId": "b", "customerId": 1, "earnedBadgeId": "e", "issuedId": None, "requestId": "r-1",
            "expiresOn": 1726809439.822, "expiresOnISO": "2024-09-20T05:17:19.822Z"}
    assert envelope("earn", 100458, "r-1", data) == {
        "type": "earn", "orgId": 100458, "requestId": "r-1", "data": data, "errors": [], "warnings": []}


def test_rejection_envelope_has_null_data_and_one_error() -> None:
    out = envelope("earn", 1, "r", None, reject(ErrorCode.REQUEST_ID_REUSED))
    assert out["data"] is None
    assert out["errors"] == [{"code": 809, "message": "Request with the same requestId is not allowed"}]
