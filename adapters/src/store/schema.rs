//! diesel's view of the tables the store queries, written by hand to match both migration
//! folders (`migrations/sqlite`, `migrations/postgres`). The SQL types are the ones both
//! dialects agree on: PostgreSQL checks them strictly, SQLite reads whatever it stored.
//! Tables that no query uses yet (roles) are not declared here.

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
        timeouts_before_down -> Nullable<BigInt>,
        transport -> Text,
        serial_device -> Nullable<Text>,
        serial_baud -> Nullable<BigInt>,
        serial_parity -> Nullable<Text>,
        serial_data_bits -> Nullable<BigInt>,
        serial_stop_bits -> Nullable<BigInt>,
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

diesel::table! {
    users (id) {
        id -> Text,
        username -> Text,
        password_hash -> Text,
        role -> Text,
        created_at -> BigInt,
        disabled -> Bool,
        email -> Nullable<Text>,
    }
}

diesel::table! {
    grants (id) {
        id -> Text,
        user_id -> Text,
        gate_id -> Nullable<Text>,
        site_id -> Nullable<Text>,
        windows -> Text,
        created_at -> BigInt,
    }
}

diesel::table! {
    api_keys (id) {
        id -> Text,
        name -> Text,
        hash -> Text,
        role -> Text,
        site_id -> Nullable<Text>,
        created_at -> BigInt,
        revoked_at -> Nullable<BigInt>,
    }
}

diesel::table! {
    refresh_token_families (id) {
        id -> Text,
        user_id -> Text,
        created_at -> BigInt,
        revoked_at -> Nullable<BigInt>,
    }
}

diesel::table! {
    refresh_tokens (id) {
        id -> Text,
        family_id -> Text,
        hash -> Text,
        issued_at -> BigInt,
        used_at -> Nullable<BigInt>,
    }
}

diesel::table! {
    audit_log (id) {
        id -> BigInt,
        at_ms -> BigInt,
        actor -> Text,
        action -> Text,
        target -> Nullable<Text>,
        source_ip -> Nullable<Text>,
        details -> Text,
    }
}

diesel::table! {
    maintenance_plans (id) {
        id -> Text,
        gate_id -> Nullable<Text>,
        site_id -> Nullable<Text>,
        title -> Text,
        every_cycles -> Nullable<BigInt>,
        every_days -> Nullable<BigInt>,
        warn_cycles -> BigInt,
        warn_days -> BigInt,
        created_at -> BigInt,
        updated_at -> BigInt,
    }
}

diesel::table! {
    maintenance_progress (plan_id, gate_id) {
        plan_id -> Text,
        gate_id -> Text,
        since_ms -> BigInt,
        since_cycles -> Nullable<BigInt>,
        announced -> Text,
    }
}

diesel::table! {
    maintenance_records (id) {
        id -> Text,
        gate_id -> Text,
        site_id -> Text,
        plan_id -> Nullable<Text>,
        status -> Text,
        opened_at -> BigInt,
        opened_by -> Text,
        lockout -> Bool,
        completed_at -> Nullable<BigInt>,
        completed_by -> Nullable<Text>,
        cycles_at -> Nullable<BigInt>,
        summary -> Text,
        parts -> Text,
        notes -> Text,
        attachments -> Text,
    }
}

diesel::table! {
    notification_rules (id) {
        id -> Text,
        trigger_kind -> Text,
        site_id -> Nullable<Text>,
        after_s -> BigInt,
        user_ids -> Text,
        roles -> Text,
        created_at -> BigInt,
    }
}

diesel::table! {
    mail_outbox (id) {
        id -> Text,
        dedupe_key -> Text,
        recipient -> Text,
        subject -> Text,
        body_text -> Text,
        body_html -> Text,
        created_at -> BigInt,
        status -> Text,
        attempts -> BigInt,
        next_attempt_at -> BigInt,
        sent_at -> Nullable<BigInt>,
        last_error -> Nullable<Text>,
    }
}

diesel::table! {
    reports (id) {
        id -> Text,
        kind -> Text,
        site_id -> Nullable<Text>,
        from_ms -> BigInt,
        to_ms -> BigInt,
        format -> Text,
        status -> Text,
        progress -> BigInt,
        row_count -> BigInt,
        blob_key -> Nullable<Text>,
        size -> Nullable<BigInt>,
        error -> Nullable<Text>,
        requested_by -> Text,
        created_at -> BigInt,
        finished_at -> Nullable<BigInt>,
        claimed_by -> Nullable<Text>,
    }
}

diesel::table! {
    account_links (id) {
        id -> Text,
        user_id -> Text,
        purpose -> Text,
        digest -> Text,
        created_at -> BigInt,
        expires_at -> BigInt,
        used_at -> Nullable<BigInt>,
    }
}

diesel::table! {
    command_ids (id) {
        id -> Text,
        gate_id -> Text,
        action -> Text,
        claimed_at -> BigInt,
    }
}
