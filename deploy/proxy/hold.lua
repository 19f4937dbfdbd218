-- Holds a request while no container of the service is ready to take it (a release
-- switching over, a container that just failed, or none started yet): looks again every
-- 10 ms, for up to 6 s, then lets it go on. deploy/proxy/haproxy.cfg sends a request here
-- only when no container is up, so a request at any other time costs nothing here.

-- Whether a container is up and its last check passed. A container the proxy has just
-- found again through DNS counts as up before it is checked; it is not ready yet.
local function any_ready(backend)
    for name, server in pairs(backend.servers) do
        local stats = server:get_stats()
        -- "* L4OK" while the next check runs.
        local passed = stats.check_status ~= nil and stats.check_status:match("L4OK$") ~= nil
        if name ~= "hold" and stats.status == "UP" and passed then
            return true
        end
    end
    return false
end

-- Held requests share one answer per 10 ms, so many of them cost no more than one.
local answer, answered_at = false, 0

local function ready_now(backend)
    local now = core.now()
    local ms = now.sec * 1000 + now.usec // 1000
    if ms - answered_at >= 10 then
        answer, answered_at = any_ready(backend), ms
    end
    return answer
end

core.register_action("hold_while_none_ready", { "http-req" }, function(txn)
    local backend = core.backends["service"]
    for _ = 1, 600 do
        if ready_now(backend) then
            return
        end
        core.msleep(10)
    end
end)
