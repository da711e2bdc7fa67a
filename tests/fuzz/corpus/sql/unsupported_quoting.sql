/* comment */ SELECT "K", "quoted "" ident" FROM "V" -- line comment
; UPDATE v SET k = 1; DELETE FROM v; SELECT * FROM a JOIN b ON true; SELECT (SELECT 1)