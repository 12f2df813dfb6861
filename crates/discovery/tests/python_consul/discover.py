"""Discovers a service through berth's Consul-compatible catalog with python-consul (Debian's
python3-consul), the way Prometheus' consul_sd_configs does: the datacenter from
/v1/agent/self, the service list, then blocking health queries on the service, each answer
turned into scrape targets. Prints one JSON object per line; tests/python_consul.rs reads them
and changes the catalog between them.

Usage: discover.py PORT SERVICE CHANGES
"""

import json
import sys

import consul
import consul.base


def emit(kind, **fields):
    print(json.dumps(dict(kind=kind, **fields)), flush=True)


def targets(entries):
    """Targets as Prometheus builds them from /v1/health/service entries."""
    found = []
    for entry in entries:
        service, node = entry["Service"], entry["Node"]
        address = service["Address"] or node["Address"]
        statuses = {check["Status"] for check in entry["Checks"]}
        health = "passing" if statuses == {"passing"} else "critical"
        found.append(
            {
                "address": "%s:%d" % (address, service["Port"]),
                "id": service["ID"],
                "service": service["Service"],
                "node": node["Node"],
                "tags": service["Tags"],
                "health": health,
                "meta": service["Meta"],
            }
        )
    return sorted(found, key=lambda target: target["id"])


def main():
    port, service, changes = int(sys.argv[1]), sys.argv[2], int(sys.argv[3])
    client = consul.Consul(host="127.0.0.1", port=port)

    config = client.agent.self()["Config"]
    emit("self", datacenter=config["Datacenter"], node=config["NodeName"])

    index, services = client.catalog.services()
    emit("services", index=index, services=services)

    index, instances = client.catalog.service(service, tag="v1")
    emit("catalog", index=index, ids=[instance["ServiceID"] for instance in instances])

    emit("agent", ids=sorted(client.agent.services()))

    index, entries = client.health.service(service, passing=True)
    emit("health", index=index, targets=targets(entries))

    # Nothing changes during this one: it ends after its wait with the same index.
    same, entries = client.health.service(service, index=index, wait="1s")
    emit("timeout", index=same, targets=targets(entries))

    for _ in range(changes):
        index, entries = client.health.service(service, index=index, wait="30s")
        emit("change", index=index, targets=targets(entries))

    try:
        client.health.service(service, index=index, wait="abc")
        emit("bad", error=None)
    except consul.base.BadRequest as error:
        emit("bad", error=str(error))


if __name__ == "__main__":
    main()
