-- wrk script for bench/run.sh: one scenario per run, chosen by BENCH_SCENARIO.
-- Every wrk thread has its own Lua state: counters live per thread and `done` (run once, in
-- the main state) sums them through the thread handles kept by `setup`.
--
-- Environment (set by run.sh):
--   BENCH_SCENARIO   get_by_id | list_page1 | list_deep_page | list_deep_cursor | search |
--                    create | patch | insights | token | mixed
--   BENCH_TOKEN      bearer token (customer.read customer.write insights.read)
--   BENCH_IDS        file with existing customer ids, one per line
--   BENCH_CURSORS    file with nextCursor values at depth, one per line
--   BENCH_DEEP_PAGE  page number for list_deep_page (pageSize 50)
--   BENCH_CLIENT_ID / BENCH_CLIENT_SECRET   dev client credentials (token scenario)
--   BENCH_RUN        a nonce that keeps created emails unique across runs
--   BENCH_OUT        file the one-line result is appended to

local scenario = os.getenv("BENCH_SCENARIO") or "get_by_id"
local token = os.getenv("BENCH_TOKEN") or ""
local run_nonce = os.getenv("BENCH_RUN") or tostring(os.time())

local threads = {}
local next_tid = 0

function setup(thread)
  next_tid = next_tid + 1
  thread:set("tid", next_tid)
  table.insert(threads, thread)
end

local function read_lines(path)
  local out = {}
  if path == nil or path == "" then return out end
  local f = io.open(path, "r")
  if f == nil then return out end
  for line in f:lines() do
    if line ~= "" then out[#out + 1] = line end
  end
  f:close()
  return out
end

local auth = { ["Authorization"] = "Bearer " .. token, ["Accept"] = "application/json" }
local json_headers = {
  ["Authorization"] = "Bearer " .. token,
  ["Accept"] = "application/json",
  ["Content-Type"] = "application/json",
}
local patch_headers = {
  ["Authorization"] = "Bearer " .. token,
  ["Accept"] = "application/json",
  ["Content-Type"] = "application/merge-patch+json",
}
local stages = { "Lead", "Opportunity", "Customer", "Churn" }

local ids, cursors = {}, {}
local deep_page = os.getenv("BENCH_DEEP_PAGE") or "1000"
local token_req

function init(args)
  -- Globals here are per thread (each thread runs its own copy of this file).
  errors, noops, created = 0, 0, 0
  first_bad = ""
  math.randomseed(os.time() * 1000 + (tid or 0) * 7919)
  ids = read_lines(os.getenv("BENCH_IDS"))
  cursors = read_lines(os.getenv("BENCH_CURSORS"))
  local body = string.format('{"clientId":"%s","clientSecret":"%s"}',
    os.getenv("BENCH_CLIENT_ID") or "", os.getenv("BENCH_CLIENT_SECRET") or "")
  token_req = wrk.format("POST", "/api/auth/token", { ["Content-Type"] = "application/json" }, body)
  last_kind = ""
end

local function random_id()
  return ids[math.random(#ids)]
end

local function get_by_id()
  return wrk.format("GET", "/api/customers/" .. random_id(), auth)
end

local function list_page1()
  return wrk.format("GET", "/api/customers?page=1&pageSize=50&sort=createdAt&order=desc", auth)
end

local function search()
  return wrk.format("GET", "/api/customers?search=maria", auth)
end

-- New customers look like the seeded ones (same first and last names, src/seed.rs), so searches
-- that run after the writes still find matches among the newest rows.
local first_names = { "Maria", "Jose", "Ana", "Joao", "Francisca", "Antonio", "Juliana", "Carlos", "Mariana",
  "Paulo", "Beatriz", "Lucas", "Fernanda", "Pedro", "Camila", "Rafael", "Larissa", "Gabriel", "Aline", "Marcos",
  "Emma", "Liam", "Olivia", "Noah", "Sophia", "Mateo", "Yuki", "Wei", "Aisha", "Ravi", "Ingrid", "Lars", "Chloe",
  "Giulia", "Mariana", "Rosa", "Tomas", "Marina", "Helena", "Davi" }
local last_names = { "Silva", "Santos", "Oliveira", "Souza", "Rodrigues", "Ferreira", "Alves", "Pereira", "Lima",
  "Gomes", "Costa", "Ribeiro", "Martins", "Carvalho", "Almeida", "Lopes", "Soares", "Fernandes", "Vieira",
  "Barbosa", "Smith", "Johnson", "Muller", "Garcia", "Rossi", "Tanaka", "Chen", "Khan", "Patel", "Dubois",
  "Andersson", "Novak" }

local function create()
  created = created + 1
  local first = first_names[math.random(#first_names)]
  local last = last_names[math.random(#last_names)]
  local body = string.format(
    '{"name":"%s %s","email":"%s.%s.bench%s.%s.%d.%d@example.com","lifecycleStage":"Lead","engagementScore":%d,"tags":["bench"]}',
    first, last, string.lower(first), string.lower(last), run_nonce, scenario, tid or 0, created, math.random(0, 100))
  return wrk.format("POST", "/api/customers", json_headers, body)
end

local function patch()
  local body = '{"lifecycleStage":"' .. stages[math.random(4)] .. '"}'
  return wrk.format("PATCH", "/api/customers/" .. random_id(), patch_headers, body)
end

local scenarios = {
  get_by_id = get_by_id,
  list_page1 = list_page1,
  list_deep_page = function()
    return wrk.format("GET", "/api/customers?page=" .. deep_page .. "&pageSize=50", auth)
  end,
  list_deep_cursor = function()
    return wrk.format("GET", "/api/customers?pageSize=50&cursor=" .. cursors[math.random(#cursors)], auth)
  end,
  search = search,
  create = create,
  patch = patch,
  insights = function()
    return wrk.format("GET", "/api/insights?from=2025-12-01&to=2026-11-30&groupBy=day", auth)
  end,
  token = function()
    return token_req
  end,
  -- 80 % reads (50 get, 15 list page 1, 15 search), 20 % writes (10 create, 10 patch).
  mixed = function()
    local r = math.random(100)
    if r <= 50 then return get_by_id()
    elseif r <= 65 then return list_page1()
    elseif r <= 80 then return search()
    elseif r <= 90 then return create()
    else return patch() end
  end,
}

local make = scenarios[scenario]
if make == nil then
  io.stderr:write("wrk.lua: unknown BENCH_SCENARIO " .. scenario .. "\n")
  os.exit(2)
end

function request()
  return make()
end

function response(status, headers, body)
  if status < 200 or status > 299 then
    errors = errors + 1
    if first_bad == "" then
      first_bad = tostring(status) .. " " .. string.sub(body or "", 1, 200)
    end
  elseif scenario == "patch" and body ~= nil and string.find(body, '"updated":false', 1, true) then
    noops = noops + 1
  end
end

function done(summary, latency, requests)
  local bad, nop, sample = 0, 0, ""
  for _, t in ipairs(threads) do
    bad = bad + (t:get("errors") or 0)
    nop = nop + (t:get("noops") or 0)
    local fb = t:get("first_bad") or ""
    if sample == "" and fb ~= "" then sample = fb end
  end
  local e = summary.errors
  local socket = e.connect + e.read + e.write + e.timeout
  local secs = summary.duration / 1e6
  local line = string.format("%s %d %.3f %.1f %d %d %d %d %d %d",
    scenario, summary.requests, secs, summary.requests / secs,
    latency:percentile(50), latency:percentile(95), latency:percentile(99),
    bad + socket, socket, nop)
  io.write("RESULT " .. line .. "\n")
  if sample ~= "" then
    io.write("FIRST_ERROR " .. string.gsub(sample, "\n", " ") .. "\n")
  end
  local out = os.getenv("BENCH_OUT")
  if out ~= nil and out ~= "" then
    local f = io.open(out, "a")
    f:write(line .. "\n")
    f:close()
  end
end
