from rtcore.bench.bench_edit import main

main()
