"""IMD v4: device-mapping CSVs are validated as a whole; a row maps one device, once."""

from __future__ import annotations

from typing import Any

from tests.deployment.conftest import Org

HEADER = (
    "emailID*,userName*,deviceName*,deviceIdentifierType*,deviceIdentifier*,"
    "oldDeviceName,restoreData\n"
)


def upload(org: Org, body: bytes, expect: int = 201) -> dict[str, Any]:
    r = org.client.post(
        "/api/v1/device-mappings",
        content=body,
        headers={"Content-Type": "text/csv"},
        params={"filename": "devices.csv"},
    )
    assert r.status_code == expect, r.text
    return dict(r.json())


def pending(org: Org) -> list[dict[str, Any]]:
    return list(org.client.get("/api/v1/device-mappings", params={"pending": True}).json()["items"])


def test_a_mapped_device_activates_into_its_user_without_saying_who_and_consumes_the_row(
    org: Org,
) -> None:
    org.user("ann@example.com")
    csv = HEADER + "ann@example.com,ann,Ann's Laptop,serial-number,abc-123,,\n"
    assert upload(org, csv.encode())["imported"] == 1
    got = org.activate(hostname="LAPTOP-77", serial_number="ABC-123")
    assert got["mode"] == "imd-v4"
    assert got["config"]["user"]["email"] == "ann@example.com"
    [device] = org.devices()
    assert device["name"] == "Ann's Laptop"
    assert pending(org) == []
    # The same device retrying still resolves; another device with no row does not.
    assert org.activate(hostname="LAPTOP-77", serial_number="abc-123")["reactivated"] is True
    assert org.activate(422, hostname="OTHER", serial_number="XYZ")["code"] == "identity_missing"


def test_a_mapping_row_and_a_different_email_is_an_email_mismatch(org: Org) -> None:
    org.user("ann@example.com")
    org.user("bob@example.com")
    upload(org, (HEADER + "ann@example.com,ann,PC,hostname,ANN-PC,,\n").encode())
    body = org.activate(403, hostname="ann-pc", email="bob@example.com")
    assert body["code"] == "email_mismatch"
    assert len(pending(org)) == 1


def test_failed_rows_are_reported_with_line_and_reason_and_nothing_is_stored(org: Org) -> None:
    org.user("ann@example.com")
    csv = (
        HEADER
        + "ann@example.com,ann,PC1,serial-number,S1,,\n"  # line 2: fine
        + "nobody@example.com,x,PC2,serial-number,S2,,\n"  # line 3: unknown user
        + "ann@example.com,ann,PC3,imei,S3,,\n"  # line 4: bad type
        + "ann@example.com,ann,PC4,serial-number,s1,,\n"  # line 5: duplicate of line 2
        + "ann@example.com,ann,PC5,uuid,U5,,EVERYTHING\n"  # line 6: bad restoreData
        + "ann@example.com,ann,,uuid,U6,,\n"  # line 7: empty deviceName
    )
    body = upload(org, csv.encode(), 422)
    assert body["code"] == "mapping_rows_invalid"
    lines = {row["line"]: row["reason"] for row in body["failed_rows"]}
    assert sorted(lines) == [3, 4, 5, 6, 7]
    assert "nobody@example.com" in lines[3]
    assert "imei" in lines[4]
    assert "line 2" in lines[5]
    assert "EVERYTHING" in lines[6]
    assert "deviceName" in lines[7]
    assert pending(org) == []
    audit = org.client.get("/api/v1/audit", params={"action": "device_mapping.reject"}).json()
    assert audit["items"][0]["after"]["code"] == "mapping_rows_invalid"


def test_whole_file_problems_are_precise(org: Org) -> None:
    org.user("ann@example.com")
    cases = [
        (b"", "empty_file"),
        (HEADER.encode(), "empty_file"),
        (b"emailID,userName,deviceName\nann@example.com,ann,PC\n", "bad_columns"),
        (
            b"emailID,userName,deviceName,deviceIdentifierType,deviceIdentifier,colour\n",
            "bad_columns",
        ),
        ((HEADER + "ann@example.com,\xe9,PC,hostname,H,,\n").encode("latin-1"), "bad_encoding"),
    ]
    for body, code in cases:
        assert upload(org, body, 422)["code"] == code, body
    assert pending(org) == []
    audit = org.client.get("/api/v1/audit", params={"action": "device_mapping.reject"}).json()
    assert sorted(e["after"]["code"] for e in audit["items"]) == sorted(c for _, c in cases)


def test_utf16_and_bom_files_from_spreadsheets_are_accepted(org: Org) -> None:
    org.user("zoë@example.com")
    csv = HEADER + "zoë@example.com,zoë,Zoë's PC,hostname,ZOE-PC,,\n"
    assert upload(org, csv.encode("utf-16"))["imported"] == 1
    assert upload(org, b"\xef\xbb\xbf" + csv.replace("ZOE-PC", "ZOE-2").encode())["imported"] == 1
    assert len(pending(org)) == 2


def test_an_identifier_already_waiting_in_a_row_cannot_be_mapped_again(org: Org) -> None:
    org.user("ann@example.com")
    upload(org, (HEADER + "ann@example.com,ann,PC,uuid,U-1,,\n").encode())
    body = upload(org, (HEADER + "ann@example.com,ann,PC,uuid,u-1,,\n").encode(), 422)
    assert "already mapped" in body["failed_rows"][0]["reason"]


def test_old_device_name_links_the_replacement_and_plans_the_restore(org: Org) -> None:
    org.user("ann@example.com")
    old = org.activate(
        email="ann@example.com",
        hostname="ANN-OLD",
        serial_number="OLD1",
        platform="windows",
        os_username="ann",
        home_dir="C:\\Users\\ann",
    )
    csv = HEADER + "ann@example.com,ann,Ann's Mac,serial-number,NEW1,ANN-OLD,DATA\n"
    upload(org, csv.encode())
    new = org.activate(
        hostname="anns-mac", serial_number="NEW1", platform="macos", home_dir="/Users/ann"
    )
    assert new["restore_plan"] is True
    devices = {d["id"]: d for d in org.devices()}
    assert devices[old["device_id"]]["state"] == "decommissioned"
    assert devices[old["device_id"]]["replaced_by_id"] == new["device_id"]
    assert devices[new["device_id"]]["replaces_id"] == old["device_id"]
    plan = org.client.get(f"/api/v1/devices/{new['device_id']}/restore-plan").json()
    assert plan["scope"] == "DATA"
    assert {"from": "C:\\Users\\ann\\Documents", "to": "/Users/ann/Documents"} in plan["plan"][
        "rules"
    ]
