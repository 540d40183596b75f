"""The fast path's SQL: PL/pgSQL functions created with the schema, and the calls that use them.

Why functions: the statements a trial needs are a few milliseconds of *planning* on the server
each time they arrive as text (the ask alone is a seven-part CTE) — more than they take to run.
Client-side prepared statements would remove that, but they are session state, which a
transaction-mode pooler (PgBouncer before 1.21, with its default settings) does not keep. A
PL/pgSQL function's plans are cached by whichever server process runs it, so they survive any
pooler. ``plan_cache_mode = force_generic_plan`` keeps the cache from re-planning for each
argument value.

The functions only touch Optuna's tables as ``RDBStorage`` does and tunefleet's own; stock Optuna
never sees them. Their names carry a version: a later change gets a new name, so workers of two
versions can share a database.
"""

from __future__ import annotations

__all__ = ["ASK", "DISTRIBUTION", "FINISH", "FUNCTIONS", "FUNCTION_NAMES", "SYNC", "WRITE"]

# A trial as one row holding everything a FrozenTrial does, for ``FROM trials t``.
_TRIAL_ROW = """t.trial_id, t.number, t.state::text, t.datetime_start, t.datetime_complete,
      (SELECT json_agg(json_build_array(p.param_name, p.param_value, p.distribution_json)
                       ORDER BY p.param_id)
         FROM trial_params p WHERE p.trial_id = t.trial_id),
      (SELECT json_agg(json_build_array(v.objective, v.value, v.value_type) ORDER BY v.objective)
         FROM trial_values v WHERE v.trial_id = t.trial_id),
      (SELECT json_agg(json_build_array(i.step, i.intermediate_value, i.intermediate_value_type)
                       ORDER BY i.step)
         FROM trial_intermediate_values i WHERE i.trial_id = t.trial_id),
      (SELECT json_agg(json_build_array(a.key, a.value_json))
         FROM trial_user_attributes a WHERE a.trial_id = t.trial_id),
      (SELECT json_agg(json_build_array(a.key, a.value_json))
         FROM trial_system_attributes a WHERE a.trial_id = t.trial_id)"""
_TRIAL_ROW_TYPE = """trial_id integer, number integer, state text, datetime_start timestamp,
  datetime_complete timestamp, params json, trial_values json, intermediate json,
  user_attrs json, system_attrs json"""

_ASK_FUNCTION = f"""
CREATE OR REPLACE FUNCTION tunefleet_ask_v2(
  p_study_id integer, p_worker_id text, p_token text, p_now timestamp,
  p_worker_key text, p_worker_json text)
RETURNS TABLE (claim_id integer, {_TRIAL_ROW_TYPE})
LANGUAGE plpgsql SET plan_cache_mode = force_generic_plan AS $$
#variable_conflict use_column
DECLARE
  v_claim integer;
  v_trial integer;
  v_number integer;
  v_created boolean := false;
BEGIN
  -- RDBStorage numbers trials under this lock: numbers stay dense and ordered across both paths,
  -- and under it max(number) + 1 is RDBStorage's count(*), read from an index in O(log n).
  PERFORM 1 FROM studies s WHERE s.study_id = p_study_id FOR UPDATE;
  -- A retry of an ask whose commit went through finds its slot by the token: that one is ours.
  SELECT c.claim_id, c.trial_id INTO v_claim, v_trial
  FROM tunefleet_claims c WHERE c.token = p_token;
  IF NOT FOUND THEN
    WITH slot AS (
      UPDATE tunefleet_studies ts SET n_claimed = ts.n_claimed + 1
      WHERE ts.study_id = p_study_id
        AND (ts.n_trials IS NULL OR ts.n_claimed < ts.n_trials)
        AND (ts.deadline IS NULL OR ts.deadline > EXTRACT(EPOCH FROM clock_timestamp()))
      RETURNING ts.study_id
    ), waiting AS (  -- a queued re-run of a lost trial goes first
      SELECT w.trial_id FROM trials w
      WHERE w.study_id = p_study_id AND w.state = 'WAITING' AND EXISTS (SELECT 1 FROM slot)
      ORDER BY w.number LIMIT 1 FOR UPDATE SKIP LOCKED
    ), popped AS (
      UPDATE trials u SET state = 'RUNNING', datetime_start = p_now
      WHERE u.trial_id IN (SELECT trial_id FROM waiting)
      RETURNING u.trial_id, u.number
    ), created AS (
      INSERT INTO trials (number, study_id, state, datetime_start)
      SELECT (SELECT coalesce(max(n.number) + 1, 0) FROM trials n WHERE n.study_id = p_study_id),
             p_study_id, 'RUNNING', p_now
      FROM slot WHERE NOT EXISTS (SELECT 1 FROM waiting)
      RETURNING trials.trial_id, trials.number
    ), trial AS (
      SELECT popped.trial_id, popped.number, false AS created FROM popped
      UNION ALL SELECT created.trial_id, created.number, true FROM created
    ), claim AS (
      INSERT INTO tunefleet_claims (study_id, worker_id, trial_id, claimed_at, requeue, token)
      SELECT p_study_id, p_worker_id, trial.trial_id, EXTRACT(EPOCH FROM clock_timestamp()), 0,
             p_token
      FROM trial RETURNING tunefleet_claims.claim_id
    ), tag AS (
      INSERT INTO trial_system_attributes (trial_id, key, value_json)
      SELECT trial.trial_id, p_worker_key, p_worker_json FROM trial
      ON CONFLICT (trial_id, key) DO UPDATE SET value_json = EXCLUDED.value_json
    )
    SELECT claim.claim_id, trial.trial_id, trial.number, trial.created
      INTO v_claim, v_trial, v_number, v_created FROM trial, claim;
  END IF;
  IF v_created THEN  -- a new trial holds nothing but its worker's tag: no need to read it back
    RETURN QUERY SELECT v_claim, v_trial, v_number, 'RUNNING'::text, p_now, NULL::timestamp,
      NULL::json, NULL::json, NULL::json, NULL::json,
      json_build_array(json_build_array(p_worker_key, p_worker_json));
    RETURN;
  END IF;
  -- The trial itself, as the sync reads it: a queued re-run has parameters and attributes.
  RETURN QUERY SELECT v_claim, {_TRIAL_ROW} FROM trials t WHERE t.trial_id = v_trial;
END $$
"""

# Every trial that may have changed since a worker last looked — those numbered from p_from_number
# on (new to it) and those it last saw unfinished — with everything a FrozenTrial holds.
_SYNC_FUNCTION = f"""
CREATE OR REPLACE FUNCTION tunefleet_sync_v1(
  p_study_id integer, p_oldest integer, p_from_number integer, p_unfinished integer[])
RETURNS TABLE ({_TRIAL_ROW_TYPE})
LANGUAGE plpgsql STABLE SET plan_cache_mode = force_generic_plan AS $$
BEGIN
  RETURN QUERY
    SELECT {_TRIAL_ROW}
    FROM trials t
    -- One index range scan from the oldest trial that may have changed; the filter drops the
    -- finished ones in between before their parameters and values are gathered. (The plan is
    -- generic, made once: a condition the index cannot take on its own would be a scan of the
    -- whole study, so the range is spelled out.)
    WHERE t.study_id = p_study_id AND t.number >= p_oldest
      AND (t.number >= p_from_number OR t.number = ANY(p_unfinished))
    ORDER BY t.number;
END $$
"""

# A running trial's parameters, intermediate values and attributes, all at once, and only while
# it is still RUNNING (a trial declared lost meanwhile keeps what it had). They come as one JSON
# document: {"params": [[name, value, distribution_json]], "intermediate": [[step, value, type]],
# "user": [[key, value_json]], "system": [[key, value_json]]} — for the client, one json.dumps
# instead of ten arrays to encode element by element.
_STORE_WRITES = """INSERT INTO trial_params (trial_id, param_name, param_value, distribution_json)
  SELECT p_trial_id, x->>0, (x->>1)::float8, x->>2
  FROM json_array_elements(p_writes->'params') AS x
  ON CONFLICT (trial_id, param_name) DO NOTHING;
  INSERT INTO trial_intermediate_values
    (trial_id, step, intermediate_value, intermediate_value_type)
  SELECT p_trial_id, (x->>0)::integer, (x->>1)::float8, (x->>2)::trialintermediatevaluetype
  FROM json_array_elements(p_writes->'intermediate') AS x
  ON CONFLICT (trial_id, step) DO UPDATE
    SET intermediate_value = EXCLUDED.intermediate_value,
        intermediate_value_type = EXCLUDED.intermediate_value_type;
  INSERT INTO trial_user_attributes (trial_id, key, value_json)
  SELECT p_trial_id, x->>0, x->>1 FROM json_array_elements(p_writes->'user') AS x
  ON CONFLICT (trial_id, key) DO UPDATE SET value_json = EXCLUDED.value_json;
  INSERT INTO trial_system_attributes (trial_id, key, value_json)
  SELECT p_trial_id, x->>0, x->>1 FROM json_array_elements(p_writes->'system') AS x
  ON CONFLICT (trial_id, key) DO UPDATE SET value_json = EXCLUDED.value_json;"""

_WRITE_FUNCTION = f"""
CREATE OR REPLACE FUNCTION tunefleet_write_v1(p_trial_id integer, p_writes json)
RETURNS boolean
LANGUAGE plpgsql SET plan_cache_mode = force_generic_plan AS $$
BEGIN
  IF NOT EXISTS (SELECT 1 FROM trials t WHERE t.trial_id = p_trial_id AND t.state = 'RUNNING')
  THEN
    RETURN false;
  END IF;
  {_STORE_WRITES}
  RETURN true;
END $$
"""

# Finish a trial: the writes still pending (JSON as above), then the state and its values
# ([[objective, value, type]]), only if it is still RUNNING: one declared lost meanwhile must not
# get values, nor late writes. Returns whether it did.
_FINISH_FUNCTION = f"""
CREATE OR REPLACE FUNCTION tunefleet_finish_v2(
  p_trial_id integer, p_state text, p_now timestamp, p_values json, p_writes json)
RETURNS boolean
LANGUAGE plpgsql SET plan_cache_mode = force_generic_plan AS $$
BEGIN
  UPDATE trials t SET state = p_state::trialstate, datetime_complete = p_now
  WHERE t.trial_id = p_trial_id AND t.state = 'RUNNING';
  IF NOT FOUND THEN
    RETURN false;
  END IF;
  {_STORE_WRITES}
  INSERT INTO trial_values (trial_id, objective, value, value_type)
  SELECT p_trial_id, (x->>0)::integer, (x->>1)::float8, (x->>2)::trialvaluetype
  FROM json_array_elements(p_values) AS x;
  RETURN true;
END $$
"""

FUNCTIONS = (_ASK_FUNCTION, _SYNC_FUNCTION, _WRITE_FUNCTION, _FINISH_FUNCTION)
FUNCTION_NAMES = (
    "tunefleet_ask_v2",
    "tunefleet_sync_v1",
    "tunefleet_write_v1",
    "tunefleet_finish_v2",
)

# The calls. Arguments are cast so that psycopg's choice of types (int2 for a small int, say)
# never decides which function is called.
ASK = """SELECT * FROM tunefleet_ask_v2(
  %(study_id)s::integer, %(worker_id)s::text, %(token)s::text, %(now)s::timestamp,
  %(worker_key)s::text, %(worker_json)s::text)"""
SYNC = """SELECT * FROM tunefleet_sync_v1(%(study_id)s::integer, %(oldest)s::integer,
  %(from_number)s::integer, %(unfinished)s::integer[])"""
WRITE = "SELECT tunefleet_write_v1(%(trial_id)s::integer, %(writes)s::json)"
FINISH = """SELECT tunefleet_finish_v2(
  %(trial_id)s::integer, %(state)s::text, %(now)s::timestamp, %(values)s::json,
  %(writes)s::json)"""
# A record of a parameter name in the study, to check a new parameter's kind against (the
# query RDBStorage runs for every parameter; the fast path, once per name and process).
DISTRIBUTION = """SELECT p.distribution_json FROM trial_params p
  JOIN trials t ON t.trial_id = p.trial_id
  WHERE t.study_id = %(study_id)s::integer AND p.param_name = %(name)s::text
  LIMIT 1"""
