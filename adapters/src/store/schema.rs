//! diesel's view of the tables the store queries, written by hand to match both migration
//! folders (`migrations/sqlite`, `migrations/postgres`). The SQL types are the ones both
//! dialects agree on: PostgreSQL checks them strictly, SQLite reads whatever it stored.
//! Tables that no query uses yet (users, grants, audit, maintenance) are not declared here.

diesel::table! {
    sites (id) {
        id -> Text,
        name -> Text,
        timezone -> Text,
    }
}

diesel::table! {
    controllers (id) {
        id -> Text,
        site -> Text,
        profile -> Text,
        endpoint -> Text,
        request_timeout_ms -> Nullable<BigInt>,
        inter_frame_delay_ms -> Nullable<BigInt>,
        poll_interval_ms -> Nullable<BigInt>,
    }
}

diesel::table! {
    gates (id) {
        id -> Text,
        controller -> Text,
        unit -> Integer,
        name -> Text,
        travel_timeout_s -> BigInt,
        auto_close_after_s -> Nullable<BigInt>,
        left_open_alert_after_s -> Nullable<BigInt>,
    }
}

diesel::table! {
    gate_events (id) {
        id -> BigInt,
        gate -> Text,
        controller -> Text,
        seq -> BigInt,
        at_ms -> BigInt,
        kind -> Text,
        cause -> Text,
        command_id -> Nullable<Text>,
        action -> Nullable<Text>,
        status -> Nullable<Text>,
        reason -> Nullable<Text>,
        state -> Text,
        cycles -> Nullable<BigInt>,
        payload -> Text,
    }
}
