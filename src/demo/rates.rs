pub async fn main() -> crate::error::Result<i32> { Ok(0) }
