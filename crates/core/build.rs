fn main() {
    // The journal's migrations are embedded with sqlx::migrate!.
    println!("cargo:rerun-if-changed=../../migrations");
}
