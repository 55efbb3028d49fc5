-- The buyer directory. One row per entry version in force now; every change
-- (including deletion) is also appended to the history tables, so the
-- directory can be read as it was at any past time.

CREATE TABLE entries (
    address                    text NOT NULL,   -- SIREN[_SIRET[_CODE]] | SIREN_SUFFIX
    valid_from                 date NOT NULL,   -- 0001-01-01: since always
    siren                      text NOT NULL,
    siret                      text NOT NULL DEFAULT '',
    routing_code               text NOT NULL DEFAULT '',
    suffix                     text NOT NULL DEFAULT '',
    platform_id                text NOT NULL,
    requires_service_code      boolean NOT NULL DEFAULT false,
    requires_commitment_number boolean NOT NULL DEFAULT false,
    valid_to                   date NOT NULL,   -- 9999-12-31: open-ended
    active                     boolean NOT NULL DEFAULT true,
    version                    bigint NOT NULL DEFAULT 1,
    updated_at                 timestamptz NOT NULL,
    PRIMARY KEY (address, valid_from),
    CHECK (valid_to >= valid_from),
    CHECK (platform_id <> '')
);
CREATE INDEX entries_siren ON entries (siren);

CREATE TABLE entry_history (
    address                    text NOT NULL,
    valid_from                 date NOT NULL,
    deleted                    boolean NOT NULL,
    platform_id                text NOT NULL,
    requires_service_code      boolean NOT NULL,
    requires_commitment_number boolean NOT NULL,
    valid_to                   date NOT NULL,
    active                     boolean NOT NULL,
    version                    bigint NOT NULL,
    recorded_at                timestamptz NOT NULL
);
CREATE INDEX entry_history_address ON entry_history (address, recorded_at);

-- Services (B2G service codes) of a unit: a SIREN or a SIREN_SIRET address.
CREATE TABLE services (
    unit                       text NOT NULL,
    code                       text NOT NULL,
    siren                      text NOT NULL,
    siret                      text NOT NULL DEFAULT '',
    name                       text NOT NULL DEFAULT '',
    active                     boolean NOT NULL DEFAULT true,
    requires_commitment_number boolean NOT NULL DEFAULT false,
    version                    bigint NOT NULL DEFAULT 1,
    updated_at                 timestamptz NOT NULL,
    PRIMARY KEY (unit, code)
);

CREATE TABLE service_history (
    unit                       text NOT NULL,
    code                       text NOT NULL,
    deleted                    boolean NOT NULL,
    name                       text NOT NULL,
    active                     boolean NOT NULL,
    requires_commitment_number boolean NOT NULL,
    version                    bigint NOT NULL,
    recorded_at                timestamptz NOT NULL
);
CREATE INDEX service_history_unit ON service_history (unit, code, recorded_at);
