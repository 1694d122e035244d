#!/usr/bin/env python3
"""Submits a 100k-record upsert (seed) and a 100k-record update to a running platform
(scripts/up.sh), waits for both, and checks that stats, logs and the contacts collection
agree record for record. Prints the timings that docs/benchmarks.md quotes.

    pip install pymongo && python3 scripts/demo_100k.py [--records 100000]
"""
import argparse
import json
import pathlib
import time
import urllib.request

import pymongo


API_KEY = None  # the demo account's, made by prepare_account


def call(base, method, path, body=None):
    data = json.dumps(body).encode() if body is not None else None
    headers = {"content-type": "application/json"}
    if API_KEY:
        headers["authorization"] = f"Bearer {API_KEY}"
    request = urllib.request.Request(base + path, data=data, method=method, headers=headers)
    with urllib.request.urlopen(request, timeout=300) as response:
        return response.status, json.load(response)


def run(base, body):
    started = time.time()
    status, view = call(base, "POST", "/bulk-actions", body)
    accepted = time.time() - started
    assert status == 202, (status, view)
    action = view["actionId"]
    while True:
        _, view = call(base, "GET", f"/bulk-actions/{action}")
        if view["status"] in ("completed", "failed", "cancelled"):
            break
        time.sleep(2)
    _, stats = call(base, "GET", f"/bulk-actions/{action}/stats")
    return action, accepted, time.time() - started, stats


def logs(base, action):
    lines, cursor = [], None
    while True:
        path = f"/bulk-actions/{action}/logs?limit=1000" + (f"&cursor={cursor}" if cursor else "")
        _, page = call(base, "GET", path)
        lines += page["items"]
        cursor = page["nextCursor"]
        if cursor is None:
            return lines


def seed_contacts(args, n, account):
    seed = [{"email": f"user{i}@example.com", "name": f"User {i}", "age": i % 100, "status": "lead"}
            for i in range(n)]
    action, accepted, total, stats = run(args.api, {"accountId": account, "entityType": "contact",
                                                    "actionType": "upsert", "data": seed})
    print(f"upsert {n}: accepted in {accepted:.1f}s, completed in {total:.1f}s "
          f"({n / total:.0f} records/s end to end), stats {stats['succeeded']}/{stats['total']}")
    assert stats["succeeded"] == n


def prepare_account(base, account):
    """Makes an API key for the demo's own account and raises its processing limit (the
    default is 10,000 records a minute), with the admin token scripts/up.sh keeps."""
    global API_KEY
    token_file = pathlib.Path(__file__).resolve().parent.parent / ".dev" / "admin-token"
    if not token_file.exists():
        raise SystemExit("no .dev/admin-token: start the platform with scripts/up.sh first")
    admin = {"content-type": "application/json",
             "authorization": f"Bearer {token_file.read_text().strip()}"}

    def admin_call(method, path, body=None):
        data = json.dumps(body).encode() if body is not None else None
        request = urllib.request.Request(base + path, data=data, method=method, headers=admin)
        with urllib.request.urlopen(request, timeout=30) as response:
            return json.load(response)

    API_KEY = admin_call("POST", f"/admin/accounts/{account}/api-keys")["apiKey"]
    admin_call("PUT", f"/admin/accounts/{account}/limits",
               {"recordsPerMinute": 100_000_000, "requestsPerMinute": 100_000})


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--api", default="http://127.0.0.1:3000")
    parser.add_argument("--mongodb", default="mongodb://127.0.0.1:27017/crm-bulk-actions")
    parser.add_argument("--records", type=int, default=100_000)
    parser.add_argument("--account", default=f"demo-{int(time.time())}")
    parser.add_argument("--skip-seed", action="store_true",
                        help="the account already holds the contacts (a previous run)")
    args = parser.parse_args()
    n, account = args.records, args.account
    prepare_account(args.api, account)
    contacts = pymongo.MongoClient(args.mongodb).get_default_database()["contacts"]

    if not args.skip_seed:
        seed_contacts(args, n, account)

    # Mixed case and whitespace on purpose: the platform normalises emails.
    change = [{"email": f" USER{i}@Example.com", "status": "customer"} for i in range(n)]
    action, accepted, total, stats = run(args.api, {"accountId": account, "entityType": "contact",
                                                    "actionType": "update", "data": change})
    print(f"update {n}: accepted in {accepted:.1f}s, completed in {total:.1f}s "
          f"({n / total:.0f} records/s end to end), stats {json.dumps(stats)}")
    assert (stats["succeeded"], stats["failed"], stats["skipped"]) == (n, 0, 0), stats

    time.sleep(2)  # logs are projected asynchronously
    lines = logs(args.api, action)
    assert len(lines) == n, len(lines)
    assert [line["index"] for line in lines] == list(range(n))
    assert all(line["code"] == "updated" for line in lines)
    by_email = {doc["email"]: doc for doc in contacts.find({"accountId": account})}
    assert len(by_email) == n, len(by_email)
    for line in lines:
        doc = by_email[line["email"]]
        assert doc["status"] == "customer" and doc["name"] == f"User {line['index']}", doc
    print(f"verified: {n} log lines, {n} contacts with status=customer, names untouched")


if __name__ == "__main__":
    main()
