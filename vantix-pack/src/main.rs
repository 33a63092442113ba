fn main() {
    std::process::exit(vantix_pack::cli::run(std::env::args_os()));
}
