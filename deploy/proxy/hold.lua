-- Holds a request while no container of the service is ready to take it (a release
-- switching over, or none started yet): looks again every 10 ms, for up to 20 s. Then the
-- request goes on, to the container that became ready or, if none did, to a 503.
-- deploy/proxy/haproxy.cfg calls it only while no container is ready, so a request at
-- any other time costs nothing here.
core.register_action("hold_while_none_ready", { "http-req" }, function(txn)
    for _ = 1, 2000 do
        if txn.f:nbsrv("service") > 0 then
            return
        end
        core.msleep(10)
    end
end)
