#!/bin/sh
# Run once by the postgres image when it makes the database (scaled.yaml): let the replica
# connect for replication from the Compose network, with the same password as everyone.
echo "host replication all all scram-sha-256" >> "$PGDATA/pg_hba.conf"
