#!/usr/bin/env python3
"""The raw store limit for the 100k update of scripts/demo_100k.py: the same change written
straight into the same MongoDB-compatible server, as fast as one client can, in the best
shape the server allows (one multi-update with an $in of 1,000 emails per round trip, no
platform in between). Compare its records/s with the demo's end-to-end figure.

    python3 scripts/bench_raw_update.py --account <the demo's account> [--records 100000]
"""
import argparse
import time

import pymongo


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--mongodb", default="mongodb://127.0.0.1:27017/crm-bulk-actions")
    parser.add_argument("--account", required=True)
    parser.add_argument("--records", type=int, default=100_000)
    parser.add_argument("--batch", type=int, default=1000)
    args = parser.parse_args()
    contacts = pymongo.MongoClient(args.mongodb).get_default_database()["contacts"]
    started = time.time()
    matched = 0
    for first in range(0, args.records, args.batch):
        emails = [f"user{i}@example.com" for i in range(first, min(args.records, first + args.batch))]
        result = contacts.update_many({"accountId": args.account, "email": {"$in": emails}},
                                      {"$set": {"status": "raw", "updatedAt": time.time()}})
        matched += result.matched_count
    elapsed = time.time() - started
    print(f"raw update {args.records}: {elapsed:.1f}s ({args.records / elapsed:.0f} records/s), matched {matched}")


if __name__ == "__main__":
    main()
